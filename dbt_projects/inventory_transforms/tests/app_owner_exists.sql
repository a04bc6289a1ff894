-- Every application must be owned by a known user; an orphaned application has
-- nobody to page when it breaks.
select
    applications.application_id,
    applications.owner_user_id

from {{ ref('stg_applications') }} as applications
left join {{ ref('stg_users') }} as owners
    on applications.owner_user_id = owners.user_id
where owners.user_id is null
