-- Two accounts must never share an email once it is normalised (trimmed, lower-cased):
-- downstream joins on email would silently double-count.
select
    email,
    count(*) as account_count

from {{ ref('stg_users') }}
group by email
having count(*) > 1
