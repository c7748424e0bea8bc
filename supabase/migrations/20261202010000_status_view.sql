-- A project's status in one round trip: the project, its newest run (as get_latest_run
-- orders) and its newest p_logs agent_logs lines, newest first. Null when there is no such
-- project. Both store adapters call it (directly, and as an RPC through PostgREST).
-- plpgsql, not sql: its statement's plan is kept per session, and this is the busiest call.
create or replace function training_agent_status(p_project_id uuid, p_logs integer)
returns jsonb language plpgsql stable as $$
begin
    return (
        select jsonb_build_object(
            'project', to_jsonb(p),
            'run', (
                select to_jsonb(r) from training_runs r
                where r.project_id = p.id
                order by r.created_at desc, r.attempt desc limit 1
            ),
            'logs', coalesce((
                select jsonb_agg(to_jsonb(l) order by l.created_at desc, l.id desc)
                from (
                    select * from agent_logs
                    where project_id = p.id
                    order by created_at desc, id desc limit greatest(p_logs, 0)
                ) l
            ), '[]'::jsonb)
        )
        from projects p where p.id = p_project_id
    );
end $$;
