-- depends_on: {{ ref('raw_applications') }}
with

source as (

    select * from {{ source('inventory', 'raw_applications') }}

),

renamed as (

    select
        id as application_id,
        trim(name) as application_name,
        owner_id as owner_user_id,
        lower(trim(criticality)) as criticality,
        created_at as created_on

    from source

)

select * from renamed
