with

users as (

    select * from {{ ref('stg_users') }}

),

applications as (

    select * from {{ ref('stg_applications') }}

),

owned as (

    select
        owner_user_id,
        count(*) as applications_owned,
        count(*) filter (where criticality = 'high') as high_criticality_owned

    from applications
    group by owner_user_id

),

final as (

    select
        users.user_id,
        users.email,
        users.full_name,
        users.department,
        users.is_active,
        users.created_on,
        coalesce(owned.applications_owned, 0) as applications_owned,
        coalesce(owned.high_criticality_owned, 0) as high_criticality_owned

    from users
    left join owned on users.user_id = owned.owner_user_id

)

select * from final
