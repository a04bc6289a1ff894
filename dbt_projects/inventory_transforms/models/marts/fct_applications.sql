with

applications as (

    select * from {{ ref('stg_applications') }}

),

users as (

    select * from {{ ref('stg_users') }}

),

final as (

    select
        applications.application_id,
        applications.application_name,
        applications.criticality,
        applications.created_on,
        applications.owner_user_id,
        users.email as owner_email,
        users.department as owner_department,
        users.is_active as owner_is_active

    from applications
    inner join users on applications.owner_user_id = users.user_id

)

select * from final
