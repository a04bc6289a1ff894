-- depends_on: {{ ref('raw_users') }}
with

source as (

    select * from {{ source('inventory', 'raw_users') }}

),

renamed as (

    select
        id as user_id,
        lower(trim(email)) as email,
        trim(full_name) as full_name,
        upper(trim(department_code)) as department_code,
        {{ map_department('department_code') }} as department,
        is_active,
        created_at as created_on

    from source

)

select * from renamed
