"""The store: one interface (:class:`Store`), two adapters (Postgres and Supabase)."""

from __future__ import annotations

from training_core.settings import Settings, SettingsError
from training_core.store.base import NewRun, ProjectRun, ProjectStatus, RunUpdate, Store


def open_store(settings: Settings) -> Store:
    """The adapter the settings ask for (``STORE_BACKEND``, or ``auto`` from what is set)."""
    if settings.resolved_store_backend == "postgres":
        from training_core.store.postgres import PostgresStore

        assert settings.database_url is not None
        return PostgresStore(
            settings.database_url.get_secret_value(),
            timeout=settings.store_timeout_seconds,
            max_size=settings.store_pool_size,
            agent_name=settings.agent_name,
        )
    from training_core.store.supabase import SupabaseStore

    if not (settings.supabase_url and settings.supabase_service_role_key):
        raise SettingsError(
            "No store configured: set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
        )
    return SupabaseStore(
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        timeout=settings.store_timeout_seconds,
        agent_name=settings.agent_name,
    )


__all__ = ["NewRun", "ProjectRun", "ProjectStatus", "RunUpdate", "Store", "open_store"]
