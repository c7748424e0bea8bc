"""Settings: read from the environment, one clear error naming the variable, secrets hidden."""

from __future__ import annotations

import io
import logging

import hpack
import pytest

from training_core.errors import StoreUnavailable
from training_core.logs import setup_logging
from training_core.settings import Settings, SettingsError, load_settings
from training_core.store import open_store
from training_core.store.postgres import PostgresStore
from training_core.store.supabase import SupabaseStore

DB_PASSWORD = "db-pass-7f3a"
SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.service-role-9c1e.signature"
TOKENS = ("token-one-51b2", "token-two-8d4c")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting leaks in from the machine running the tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def secret_env(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clean_env.setenv("DATABASE_URL", f"postgresql://agent:{DB_PASSWORD}@127.0.0.1:1/training")
    clean_env.setenv("SUPABASE_URL", "https://project.supabase.co/")
    clean_env.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    clean_env.setenv("API_TOKENS", ",".join(TOKENS))
    return clean_env


@pytest.fixture
def log_output() -> io.StringIO:
    """Everything the agent's logging writes, DEBUG included."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("DEBUG", "text", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def secrets_in(text: str) -> list[str]:
    return [secret for secret in (DB_PASSWORD, SERVICE_KEY, *TOKENS) if secret in text]


def test_defaults_need_no_environment() -> None:
    settings = load_settings()

    assert (settings.batch_size, settings.default_epochs, settings.default_learning_rate) == (
        32,
        10,
        0.001,
    )
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
    assert settings.api_tokens == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCH_SIZE", "thirty-two"),
        ("BATCH_SIZE", "0"),
        ("DEFAULT_EPOCHS", "-3"),
        ("DEFAULT_LEARNING_RATE", "fast"),
        ("BUCKET_URL", "s3://my-bucket"),
        ("LOG_LEVEL", "chatty"),
        ("LOG_FORMAT", "xml"),
        ("STORE_BACKEND", "mysql"),
        ("STORE_TIMEOUT_SECONDS", "-2.5"),
        ("SUPABASE_URL", "project.supabase.co"),
        ("DATABASE_URL", f"not a url {DB_PASSWORD}"),
    ],
)
def test_a_malformed_value_is_named_and_not_echoed(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)

    with pytest.raises(SettingsError) as error:
        load_settings()

    message = str(error.value)
    assert f"{name}:" in message
    assert value not in message
    assert "\n" not in message  # one clear line


@pytest.mark.parametrize(
    ("backend", "named"),
    [("postgres", "DATABASE_URL"), ("supabase", "SUPABASE_SERVICE_ROLE_KEY")],
)
def test_a_missing_store_setting_is_named(
    clean_env: pytest.MonkeyPatch, backend: str, named: str
) -> None:
    clean_env.setenv("STORE_BACKEND", backend)

    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_several_bad_values_are_all_named(secret_env: pytest.MonkeyPatch) -> None:
    secret_env.setenv("BATCH_SIZE", "many")
    secret_env.setenv("BUCKET_URL", "ftp://bucket")

    with pytest.raises(SettingsError) as error:
        load_settings()

    assert "BATCH_SIZE" in str(error.value) and "BUCKET_URL" in str(error.value)
    assert secrets_in(str(error.value)) == []


def test_api_tokens_are_a_comma_separated_list_of_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_TOKENS", f" {TOKENS[0]} ,, {TOKENS[1]},")

    tokens = load_settings().api_tokens

    assert [token.get_secret_value() for token in tokens] == list(TOKENS)


def test_secrets_stay_out_of_reprs_and_dumps(secret_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()

    assert settings.supabase_url == "https://project.supabase.co"
    assert (
        settings.database_url is not None
        and DB_PASSWORD in settings.database_url.get_secret_value()
    )
    assert secrets_in(repr(settings)) == []
    assert secrets_in(str(settings)) == []
    assert secrets_in(settings.model_dump_json()) == []


def test_secrets_stay_out_of_log_output(
    secret_env: pytest.MonkeyPatch, log_output: io.StringIO
) -> None:
    settings = load_settings()
    log = logging.getLogger("training_core.test")
    log.info("settings: %s / %r", settings, settings)

    for backend in ("postgres", "supabase"):
        store = open_store(
            settings.model_copy(update={"store_backend": backend, "store_timeout_seconds": 1})
        )
        log.info("store: %r", store)
        with pytest.raises(StoreUnavailable) as error:
            store.ping()  # nothing listens: failures are logged and raised
        log.warning("store failed: %s", error.value)
        store.close()

    output = log_output.getvalue()
    assert "store failed" in output and "settings:" in output
    assert secrets_in(output) == []


def test_http2_header_logging_never_shows_the_key(log_output: io.StringIO) -> None:
    # With HTTP/2 (Supabase over TLS), the header encoder logs header values at DEBUG.
    hpack.Encoder().encode([("apikey", SERVICE_KEY), ("authorization", f"Bearer {SERVICE_KEY}")])

    assert secrets_in(log_output.getvalue()) == []


def test_open_store_picks_the_adapter_from_the_settings(secret_env: pytest.MonkeyPatch) -> None:
    both = load_settings()
    chosen = {
        backend: open_store(both.model_copy(update={"store_backend": backend}))
        for backend in ("auto", "postgres", "supabase")
    }
    try:
        assert isinstance(chosen["auto"], PostgresStore)  # a DATABASE_URL wins
        assert isinstance(chosen["postgres"], PostgresStore)
        assert isinstance(chosen["supabase"], SupabaseStore)
    finally:
        for store in chosen.values():
            store.close()


def test_open_store_without_any_store_names_what_to_set() -> None:
    with pytest.raises(
        SettingsError, match="DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
    ):
        open_store(load_settings())
