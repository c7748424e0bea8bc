"""The PostgREST-compatible test endpoint answers supabase-py as PostgREST does.

``SupabaseStore`` is only as well tested as this endpoint is faithful, so its wire
behaviour (filters, Prefer headers, status codes, error bodies) is checked here with
the real supabase-py client and plain HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from postgrest import APIError

from supabase import Client, ClientOptions, create_client
from tests.fixtures.postgrest import SERVICE_ROLE_KEY
from training_core.errors import StoreUnavailable
from training_core.store.supabase import SupabaseStore

HEADERS = {"apikey": SERVICE_ROLE_KEY, "Authorization": f"Bearer {SERVICE_ROLE_KEY}"}


@pytest.fixture
def client(postgrest_url: str) -> Client:
    return create_client(
        postgrest_url, SERVICE_ROLE_KEY, ClientOptions(postgrest_client_retry=False)
    )


@pytest.fixture
def http(postgrest_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{postgrest_url}/rest/v1", headers=HEADERS, timeout=10) as session:
        yield session


@pytest.fixture
def datasets(client: Client) -> list[dict[str, Any]]:
    """Five datasets of one project: sizes 10…50, one without a name."""
    project = (
        client.table("projects")
        .insert({"name": "digits", "status": "pending_training"})
        .execute()
        .data[0]
    )
    rows = [
        {
            "project_id": project["id"],
            "name": name,
            "gcs_url": f"gs://bucket/{i}.zip",
            "size": 10 * (i + 1),
        }
        for i, name in enumerate(["Alpha", "beta", "gamma, the third", None, "delta"])
    ]
    return client.table("datasets").insert(rows).execute().data


def names(query: Any) -> list[Any]:
    return [row["name"] for row in query.execute().data]


def test_filters_select_what_postgrest_selects(
    client: Client, datasets: list[dict[str, Any]]
) -> None:
    def table() -> Any:
        return client.table("datasets").select("name").order("size")

    assert names(table().eq("size", 20)) == ["beta"]
    assert names(table().neq("size", 20)) == ["Alpha", "gamma, the third", None, "delta"]
    assert names(table().gt("size", 30)) == [None, "delta"]
    assert names(table().gte("size", 30)) == ["gamma, the third", None, "delta"]
    assert names(table().lt("size", 20)) == ["Alpha"]
    assert names(table().lte("size", 20)) == ["Alpha", "beta"]
    assert names(table().like("name", "%ta")) == ["beta", "delta"]
    assert names(table().like("name", "a*")) == []  # like is case-sensitive, "*" is "%"
    assert names(table().ilike("name", "a*")) == ["Alpha"]
    assert names(table().is_("name", None)) == [None]
    assert names(table().not_.is_("name", None)) == ["Alpha", "beta", "gamma, the third", "delta"]
    assert names(table().in_("name", ["beta", "gamma, the third"])) == ["beta", "gamma, the third"]
    assert names(table().not_.in_("size", [10, 20, 30])) == [None, "delta"]
    assert names(table().in_("name", [])) == []


def test_order_limit_and_offset(client: Client, datasets: list[dict[str, Any]]) -> None:
    query = client.table("datasets").select("name, size")

    assert names(query.order("size", desc=True).limit(2)) == ["delta", None]
    assert names(
        client.table("datasets").select("name").order("name", nullsfirst=True).limit(2)
    ) == [None, "Alpha"]
    assert names(client.table("datasets").select("name").order("size").limit(2).offset(1)) == [
        "beta",
        "gamma, the third",
    ]
    assert set(client.table("datasets").select("name, size").limit(1).execute().data[0]) == {
        "name",
        "size",
    }


def test_insert_answers_201_with_the_rows_or_nothing(http: httpx.Client) -> None:
    wanted = http.post("/projects", json={"name": "a"}, headers={"Prefer": "return=representation"})
    minimal = http.post(
        "/projects", json=[{"name": "b"}, {"name": "c"}], headers={"Prefer": "return=minimal"}
    )

    assert wanted.status_code == 201
    assert [(row["name"], row["status"]) for row in wanted.json()] == [("a", "pending_training")]
    assert (minimal.status_code, minimal.content) == (201, b"")
    assert sorted(
        row["name"] for row in http.get("/projects", params={"select": "name"}).json()
    ) == ["a", "b", "c"]


def test_upsert_merges_or_ignores_duplicates(client: Client) -> None:
    project = (
        client.table("projects").insert({"name": "old", "status": "training"}).execute().data[0]
    )

    merged = (
        client.table("projects")
        .upsert({"id": project["id"], "name": "new"}, on_conflict="id")
        .execute()
    )
    ignored = (
        client.table("projects")
        .upsert({"id": project["id"], "name": "newer"}, ignore_duplicates=True)
        .execute()
    )

    assert [(r["name"], r["status"]) for r in merged.data] == [("new", "training")]
    assert ignored.data == []
    assert names(client.table("projects").select("name")) == ["new"]


def test_a_conditional_patch_answers_the_updated_rows_or_none(
    client: Client, http: httpx.Client
) -> None:
    project = client.table("projects").insert({"name": "digits"}).execute().data[0]

    def claim() -> list[dict[str, Any]]:
        query = client.table("projects").update({"status": "training"}).eq("id", project["id"])
        return query.eq("status", "pending_training").execute().data

    assert [row["status"] for row in claim()] == ["training"]
    assert claim() == []
    minimal = http.patch("/projects", params={"id": f"eq.{project['id']}"}, json={"name": "x"})
    assert (minimal.status_code, minimal.content) == (204, b"")


def test_rpc_calls_a_function_with_named_arguments(client: Client, db) -> None:
    db.execute(
        "create function add_numbers(a integer, b integer) returns integer language sql as 'select a + b'"
    )
    db.execute(
        "create function projects_named(prefix text) returns setof projects language sql"
        " as $$ select * from projects where name like prefix || '%' order by name $$"
    )
    client.table("projects").insert(
        [{"name": "cats"}, {"name": "cars"}, {"name": "dogs"}]
    ).execute()

    assert client.rpc("add_numbers", {"a": 2, "b": 40}).execute().data == 42
    assert names(client.rpc("projects_named", {"prefix": "ca"})) == ["cars", "cats"]
    with pytest.raises(APIError) as unknown:
        client.rpc("add_numbers", {"a": 1, "c": 2}).execute()
    assert unknown.value.code == "PGRST202"


def test_database_errors_carry_the_sqlstate(client: Client, http: httpx.Client) -> None:
    project = client.table("projects").insert({"name": "digits"}).execute().data[0]

    duplicate = http.post("/projects", json={"id": project["id"], "name": "again"})
    missing_parent = http.post(
        "/datasets", json={"project_id": "6f0e0f3c-0000-4000-8000-000000000000", "gcs_url": "x"}
    )
    bad_uuid = http.get("/projects", params={"id": "eq.not-a-uuid"})

    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "23505"
    assert set(duplicate.json()) == {"code", "message", "details", "hint"}
    assert "already exists" in duplicate.json()["details"]
    assert (missing_parent.status_code, missing_parent.json()["code"]) == (409, "23503")
    assert (bad_uuid.status_code, bad_uuid.json()["code"]) == (400, "22P02")
    with pytest.raises(APIError) as raised:
        client.table("projects").insert({"id": project["id"], "name": "again"}).execute()
    assert raised.value.code == "23505"


def test_names_are_checked_against_the_catalog(http: httpx.Client, db) -> None:
    injected = http.get("/projects", params={'name"; drop table projects; --': "eq.x"})
    unknown_table = http.get("/nope")
    unknown_column = http.post("/projects", json={"name": "a", "colour": "red"})
    bad_filter = http.get("/projects", params={"name": "between.a.b"})

    assert (injected.status_code, injected.json()["code"]) == (400, "42703")
    assert (unknown_table.status_code, unknown_table.json()["code"]) == (404, "PGRST205")
    assert (unknown_column.status_code, unknown_column.json()["code"]) == (400, "PGRST204")
    assert (bad_filter.status_code, bad_filter.json()["code"]) == (400, "PGRST100")
    assert db.execute("select count(*) as n from projects").fetchone() == {"n": 0}


def test_requests_need_the_key_and_the_public_schema(postgrest_url: str) -> None:
    url = f"{postgrest_url}/rest/v1/projects"

    anonymous = httpx.get(url)
    wrong_bearer = httpx.get(
        url, headers={"apikey": SERVICE_ROLE_KEY, "Authorization": "Bearer other"}
    )
    other_schema = httpx.get(url, headers={**HEADERS, "Accept-Profile": "private"})

    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "PGRST301")
    assert wrong_bearer.status_code == 401
    assert (other_schema.status_code, other_schema.json()["code"]) == (406, "PGRST106")
    assert httpx.get(url, headers=HEADERS).json() == []


def test_the_store_reports_a_refused_key_without_showing_it(postgrest_url: str) -> None:
    wrong_key = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.not-the-service-role"
    store = SupabaseStore(postgrest_url, wrong_key, timeout=5)

    with pytest.raises(StoreUnavailable, match="refused the service-role key") as error:
        store.ping()

    assert wrong_key not in str(error.value) and wrong_key not in repr(store)
    store.close()


def test_the_store_reports_a_proxy_error_page_as_unavailable() -> None:
    class BadGateway(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), BadGateway) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        store = SupabaseStore(f"http://127.0.0.1:{proxy.server_port}", SERVICE_ROLE_KEY, timeout=5)
        try:
            with pytest.raises(StoreUnavailable, match="502"):
                store.ping()
        finally:
            store.close()
            proxy.shutdown()


def test_single_reads_one_object_and_unimplemented_options_are_refused(client: Client) -> None:
    client.table("projects").insert([{"name": "a"}, {"name": "b"}]).execute()

    one = client.table("projects").select("name").eq("name", "a").single().execute()
    with pytest.raises(APIError) as several:
        client.table("projects").select("name").single().execute()
    with pytest.raises(APIError) as counted:
        client.table("projects").select("name", count="exact").execute()

    assert one.data == {"name": "a"}
    assert several.value.code == "PGRST116"
    assert counted.value.code == "TEST501"
