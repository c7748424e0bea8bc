-- A start claims its project and records the run in one transaction: an API killed, or a
-- store failing, half-way leaves neither, so no project is ever left `training` without a
-- run. Both store adapters call it (directly, and as an RPC through PostgREST).
-- No row back: the project was not in p_pending (another start won, or it is gone). A second
-- active run for the project violates training_runs_one_active, undoing the claim too.
create or replace function training_agent_start_run(
    p_project_id uuid, p_pending text, p_training text,
    p_run_id uuid, p_name text, p_attempt integer, p_spec jsonb, p_model_url text
) returns setof training_runs language plpgsql as $$
begin
    update projects set status = p_training where id = p_project_id and status = p_pending;
    if found then
        return query
            insert into training_runs (id, project_id, name, attempt, spec, model_url)
            values (p_run_id, p_project_id, p_name, p_attempt, p_spec, p_model_url)
            returning *;
    end if;
end $$;

-- Projects claimed (`training`) for longer than p_older_than_seconds without an active run
-- go back to p_pending: what an older agent, or the platform, may have left behind.
create or replace function training_agent_release_stale_claims(
    p_training text, p_pending text, p_older_than_seconds double precision
) returns setof projects language sql as $$
    update projects p set status = p_pending
    where p.status = p_training
      and p.updated_at < now() - make_interval(secs => p_older_than_seconds)
      and not exists (
          select 1 from training_runs r
          where r.project_id = p.id and r.phase in ('Queued', 'Pending', 'Running')
      )
    returning p.*;
$$;
