"""API keys: format, verification, levels, scope by cryptography, rotation, revocation."""

from __future__ import annotations

import datetime as dt
import errno
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repolib
from repolib import crypto, keys
from tests.helpers import Clock

from .helpers import S3_KEY, S3_READ_KEY, S3_SECRET, raw_db

pytestmark = pytest.mark.stores("sqlite", "postgres")


def test_token_form(repo: repolib.Repository) -> None:
    issued = repo.create_key("ci", "read")
    token = issued.token
    assert token.startswith("rpk_")
    key_id, secret = keys.parse_token(token)
    assert key_id == issued.key_id and len(key_id) == 12 and len(secret) == 43
    assert "_" not in key_id + secret
    assert token not in repr(issued) and token not in str(issued)
    assert secret not in repr(issued.info) and issued.info.masked.endswith("******")


@pytest.mark.parametrize("bad", [None, "", " ", "rpk_", "rpk_abc_def", 42, b"rpk_x"])
def test_missing_or_malformed_keys_are_invalid(repo: repolib.Repository, bad: object) -> None:
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=bad)  # type: ignore[arg-type]


def test_padded_or_case_folded_tokens_are_invalid(repo: repolib.Repository) -> None:
    token = repo.create_key("ci", "read").token
    assert repolib.open("analytics", key=token).access is repolib.Access.READ
    for variant in (
        token + "\n",
        " " + token,
        token + " ",
        token.upper(),
        "RPK_" + token[4:],
        token[:-1],
        token + "A",
    ):
        with pytest.raises(repolib.InvalidKey):
            repolib.open("analytics", key=variant)


def test_whitespace_around_a_token_is_named_without_showing_the_key(
    repo: repolib.Repository, tmp_path: Path
) -> None:
    issued = repo.create_key("ci", "read")
    token = issued.token
    key_file = tmp_path / "key"
    key_file.write_text(token + "\n")
    generic = str(repolib.InvalidKey())
    revoked = repo.create_key("old", "read")
    repo.revoke_key(revoked.key_id)
    with key_file.open() as f:
        read = f.read()  # what a newcomer writes: the newline stays
    for variant in (
        read,
        " " + token,
        token + "\r\n",
        "\t" + token + " ",
        revoked.token + "\n",
        "rpk_short\n",
    ):
        with pytest.raises(repolib.InvalidKey) as exc:
            repolib.open("analytics", key=variant)
        message = str(exc.value)
        assert "leading or trailing whitespace" in message and message != generic
        for shown in (message, repr(exc.value)):
            assert token not in shown and issued.key_id not in shown
            assert keys.parse_token(token)[1][:8] not in shown and revoked.key_id not in shown
            assert "\n" not in shown and "\\n" not in shown and "\t" not in shown
    # Parsing stays exact, and a revoked, wrong or expired key is still the one opaque error.
    for bad in (revoked.token, keys.format_token(issued.key_id, keys.new_secret()), token[:-1]):
        with pytest.raises(repolib.InvalidKey) as exc:
            repolib.open("analytics", key=bad)
        assert str(exc.value) == generic


def test_wrong_secret_for_a_real_key_id_is_invalid(repo: repolib.Repository) -> None:
    issued = repo.create_key("ci", "read")
    forged = keys.format_token(issued.key_id, keys.new_secret())
    with pytest.raises(repolib.InvalidKey) as exc:
        repolib.open("analytics", key=forged)
    with pytest.raises(repolib.InvalidKey) as exc2:
        repolib.open("analytics", key=keys.format_token(keys.new_key_id(), keys.new_secret()))
    assert str(exc.value) == str(exc2.value)  # unknown and wrong look the same


def test_never_falls_back_to_the_admin_secret(
    repo: repolib.Repository, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", (home / "admin.key").read_text().strip())
    with pytest.raises(repolib.InvalidKey, match="no API key"):
        repolib.open("analytics")
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key="")


def test_key_from_environment_and_file(
    repo: repolib.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = repo.create_key("ci", "write").token
    monkeypatch.setenv("REPOLIB_KEY", token)
    assert repolib.open("analytics").access is repolib.Access.WRITE
    monkeypatch.delenv("REPOLIB_KEY")
    f = tmp_path / "key"
    f.write_text(token + "\n")  # what `echo` writes: one newline is allowed in a file
    monkeypatch.setenv("REPOLIB_KEY_FILE", str(f))
    assert repolib.open("analytics").key_id == keys.parse_token(token)[0]
    f.write_text(token + "\n\n")
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics")
    monkeypatch.setenv("REPOLIB_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(repolib.InvalidKey, match="key file"):
        repolib.open("analytics")


def test_opened_repository_reports_access_scope_and_id(repo: repolib.Repository) -> None:
    issued = repo.create_key("ci", "read", resources=["raw"], expires_in=3600)
    r = repolib.open("analytics", key=issued.token)
    assert r.access == "read" and r.access is repolib.Access.READ
    assert r.key_id == issued.key_id
    assert [x.name for x in r.resources()] == ["raw"]
    me = r.whoami()
    assert me is not None and me.resources == ("raw",) and me.expires_at is not None
    assert "read" in repr(r) and issued.token not in repr(r)


def test_key_of_one_repository_opens_nothing_of_another(
    repo: repolib.Repository, catalog: repolib.Catalog
) -> None:
    other = catalog.create_repository("finance")
    other.add_storage("ledger", "memory://ledger")
    token = repo.create_key("ci", "admin").token
    with pytest.raises(repolib.InvalidKey):
        repolib.open("finance", key=token)
    with pytest.raises(repolib.ConfigError, match="no repository"):
        repolib.open("nosuch", key=token)


def test_read_key_cannot_do_admin_things(repo: repolib.Repository) -> None:
    r = repolib.open("analytics", key=repo.create_key("ci", "read").token)
    for call in (
        lambda: r.create_key("x"),
        lambda: r.add_storage("new", "memory://n"),
        lambda: r.keys(),
        lambda: r.remove_resource("raw"),
        lambda: r.update_resource("raw", region="x"),
        lambda: r.update("d"),
    ):
        with pytest.raises(repolib.AccessDenied) as exc:
            call()
        assert isinstance(exc.value, PermissionError) and exc.value.errno == errno.EACCES
        assert "needs admin access" in str(exc.value)
    w = repolib.open("analytics", key=repo.create_key("w", "write").token)
    with pytest.raises(repolib.AccessDenied):
        w.create_key("x")


def test_denials_are_audited_and_rate_limited(
    repo: repolib.Repository, catalog: repolib.Catalog
) -> None:
    r = repolib.open("analytics", key=repo.create_key("ci", "read").token)
    for _ in range(5):
        with pytest.raises(repolib.AccessDenied):
            r.create_key("x")
    denied = [e for e in catalog.audit("analytics") if e.action == "access.denied"]
    assert len(denied) == 1 and denied[0].actor == f"key:{r.key_id}"


def test_expired_key_fails_with_time_passed_in(repo: repolib.Repository, home: Path) -> None:
    clock = Clock()
    token = repo.create_key("ci", "read", expires_in=3600).token
    assert repolib.open("analytics", key=token, clock=clock).access is repolib.Access.READ
    clock.t += 3599
    repolib.open("analytics", key=token, clock=clock)
    clock.t += 2
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=token, clock=clock)


def test_key_expiring_while_open_stops_working(repo: repolib.Repository) -> None:
    clock = Clock()
    token = repo.create_key("ci", "admin", expires_in=60).token
    r = repolib.open("analytics", key=token, clock=clock)
    r.resolve("raw")
    clock.t += 61
    with pytest.raises(repolib.InvalidKey):
        r.resolve("raw")
    with pytest.raises(repolib.InvalidKey):
        r.create_key("x", "read")


def test_revoked_key_fails_and_loses_its_wraps(repo: repolib.Repository, home: Path) -> None:
    issued = repo.create_key("ci", "read")
    r = repolib.open("analytics", key=issued.token)
    repo.revoke_key(issued.key_id)
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=issued.token)
    with pytest.raises(repolib.InvalidKey):
        r.resolve("raw")  # an open handle notices too
    conn = raw_db(home)
    assert (
        conn.execute(
            "SELECT count(*) FROM key_secrets WHERE key_id=?", (issued.key_id,)
        ).fetchone()[0]
        == 0
    )
    assert (
        conn.execute("SELECT count(*) FROM key_wraps WHERE key_id=?", (issued.key_id,)).fetchone()[
            0
        ]
        == 0
    )
    info = repo.key(issued.key_id)
    assert info.status() == "revoked"  # soft delete: still listed
    with pytest.raises(repolib.ConfigError, match="cannot be rotated"):
        repo.rotate_key(issued.key_id)


def test_rotation_without_grace(repo: repolib.Repository) -> None:
    old = repo.create_key("ci", "read", resources=["raw"])
    new = repo.rotate_key(old.key_id, grace=0)
    assert new.key_id == old.key_id and new.token != old.token
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=old.token)
    r = repolib.open("analytics", key=new.token)
    assert r.resolve("raw").credentials["key"] == S3_READ_KEY
    assert [x.name for x in r.resources()] == ["raw"]


def test_rotation_with_grace_then_purge(repo: repolib.Repository, home: Path) -> None:
    clock = Clock()
    cat = repolib.Catalog(home, clock=clock)
    admin = cat.repository("analytics")
    old = admin.create_key("ci", "write")
    new = admin.rotate_key(old.key_id, grace=60)
    clock.t += 30
    assert cat.open("analytics", old.token).resolve("raw").credentials["key"] == S3_KEY
    assert cat.open("analytics", new.token).resolve("raw").credentials["key"] == S3_KEY
    clock.t += 31
    with pytest.raises(repolib.InvalidKey):
        cat.open("analytics", old.token)
    admin.update("trigger a write")  # any write purges expired generations
    conn = raw_db(home)
    gens = conn.execute(
        "SELECT generation FROM key_secrets WHERE key_id=?", (old.key_id,)
    ).fetchall()
    assert gens == [(2,)]
    assert {
        g
        for (g,) in conn.execute(
            "SELECT DISTINCT generation FROM key_wraps WHERE key_id=?", (old.key_id,)
        )
    } == {2}


def test_last_used_is_written_at_most_once_a_minute(repo: repolib.Repository, home: Path) -> None:
    clock = Clock()
    cat = repolib.Catalog(home, clock=clock)
    issued = repo.create_key("ci", "read")
    cat.open("analytics", issued.token)
    first = cat.keys("analytics")[0].last_used_at
    assert first == clock.t
    clock.t += 30
    cat.open("analytics", issued.token)
    assert cat.keys("analytics")[0].last_used_at == first
    clock.t += 31
    cat.open("analytics", issued.token)
    assert cat.keys("analytics")[0].last_used_at == clock.t
    uses = [e for e in cat.audit("analytics") if e.action == "key.first_use"]
    assert len(uses) == 1


# -- scope is cryptographic -----------------------------------------------------------------


def test_scoped_key_cannot_decrypt_other_resources_even_from_the_catalog(
    repo: repolib.Repository, home: Path
) -> None:
    issued = repo.create_key("ci", "write", resources=["scratch"])
    key_id, secret = keys.parse_token(issued.token)
    material = crypto.derive_key_material(secret, key_id)
    store = repolib.Catalog(home)._ctx.store
    with store.read() as tx:
        resources = {r.name: r for r in tx.resource_list()}
        wraps = tx.wraps(key_id=key_id)
    assert {w.resource_id for w in wraps} == {resources["scratch"].id}
    # Every sealed value in the catalog, tried against every resource: only scratch opens.
    with store.read() as tx:
        all_wraps = tx.wraps()
    opened = set()
    for w in all_wraps:
        for which in ("full", "read"):
            for rid in (r.id for r in resources.values()):
                ad = f"grant|{key_id}|1|{rid}|{which}".encode()
                try:
                    material.unseal(w.sealed, ad)
                    opened.add(rid)
                except repolib.SecretError:
                    pass
    for r in resources.values():
        for blob in (r.admin_wrap, r.admin_read_wrap or b""):
            with pytest.raises(repolib.SecretError):
                material.unseal(blob, f"admin|{r.id}|full".encode())
    assert opened == {resources["scratch"].id}
    r = repolib.open("analytics", key=issued.token)
    with pytest.raises(repolib.AccessDenied, match="outside the key's scope"):
        r.resolve("raw")
    # Even with the scope row edited in the catalog, the key holds no data key for raw.
    raw_db(home).execute("UPDATE keys SET scope = NULL WHERE key_id = ?", (key_id,))
    r = repolib.open("analytics", key=issued.token)
    with pytest.raises(repolib.AccessDenied, match="holds no credentials"):
        r.resolve("raw")


def test_read_keys_get_the_read_only_credential_set(repo: repolib.Repository) -> None:
    reader = repolib.open("analytics", key=repo.create_key("r", "read").token)
    writer = repolib.open("analytics", key=repo.create_key("w", "write").token)
    assert reader.resolve("raw").credentials["key"] == S3_READ_KEY
    assert reader.resolve("raw").credential_set == "read"
    assert writer.resolve("raw").credentials == {"key": S3_KEY, "secret": S3_SECRET}
    # a resource without a read set gives READ keys the only set there is
    assert reader.resolve("local").credential_set == "full"


def test_resource_added_later_reaches_keys_whose_scope_is_all(repo: repolib.Repository) -> None:
    everything = repo.create_key("all", "read")
    scoped = repo.create_key("some", "read", resources=["raw"])
    repo.add_storage("later", "memory://later")
    assert "later" in [r.name for r in repolib.open("analytics", key=everything.token).resources()]
    assert repolib.open("analytics", key=everything.token).resolve("later").credentials == {}
    s = repolib.open("analytics", key=scoped.token)
    assert "later" not in [r.name for r in s.resources()]
    with pytest.raises(repolib.AccessDenied):
        s.resolve("later")


def test_update_key_changes_scope_expiry_and_policy(repo: repolib.Repository) -> None:
    issued = repo.create_key("ci", "read", resources=["raw"])
    info = repo.update_key(
        issued.key_id,
        resources=["scratch"],
        expires_in=60,
        ai=repolib.AIPolicy(models=["fast"], max_tokens=64),
    )
    assert info.resources == ("scratch",) and info.expires_at is not None
    assert info.ai is not None and info.ai.models == ("fast",)
    r = repolib.open("analytics", key=issued.token)
    assert r.resolve("scratch").credentials == {}
    with pytest.raises(repolib.AccessDenied):
        r.resolve("raw")
    info = repo.update_key(issued.key_id, resources=None, expires_in=None, ai=False)
    assert info.resources is None and info.expires_at is None and info.ai is None
    assert repolib.open("analytics", key=issued.token).resolve("raw").credentials


def test_update_resource_regrants_and_old_data_keys_open_nothing(
    repo: repolib.Repository, home: Path
) -> None:
    issued = repo.create_key("w", "write")
    store = repolib.Catalog(home)._ctx.store
    with store.read() as tx:
        rid = tx.resource_get(1, "raw").id  # type: ignore[union-attr]
        old_wrap = tx.wrap_get(issued.key_id, 1, rid, "full")
    assert old_wrap is not None
    repo.update_resource("raw", key="ROTATED", secret="ROTATED-SECRET")
    assert (
        repolib.open("analytics", key=issued.token).resolve("raw").credentials["key"] == "ROTATED"
    )
    # A copy of the old wrap (taken before rotation) no longer decrypts the new ciphertext.
    key_id, secret = keys.parse_token(issued.token)
    old_dk = crypto.derive_key_material(secret, key_id).unseal(
        old_wrap.sealed, f"grant|{key_id}|1|{rid}|full".encode()
    )
    with store.read() as tx:
        row = tx.resource_get(1, "raw")
    with pytest.raises(repolib.SecretError):
        crypto.decrypt(old_dk, row.ciphertext, b"anything")  # type: ignore[union-attr]


# -- ADMIN keys -----------------------------------------------------------------------------


def test_admin_key_manages_keys_without_the_admin_secret(
    repo: repolib.Repository, home: Path
) -> None:
    token = repo.create_key("ops", "admin").token
    (home / "admin.key").rename(home.parent / "offline-admin.key")  # app machine: no secret
    r = repolib.open("analytics", key=token)
    child = r.create_key("app", "write", resources=["raw"], expires_in=3600)
    c = repolib.open("analytics", key=child.token)
    assert c.resolve("raw").credentials["secret"] == S3_SECRET
    rotated = r.rotate_key(child.key_id, grace=0)
    assert repolib.open("analytics", key=rotated.token).resolve("raw").credentials
    r.update_key(child.key_id, resources=["raw", "scratch"])
    assert repolib.open("analytics", key=rotated.token).resolve("scratch").credentials == {}
    r.revoke_key(child.key_id)
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=rotated.token)
    assert {k.key_id for k in r.keys()} >= {child.key_id}


def test_admin_key_creates_nothing_stronger_than_itself(repo: repolib.Repository) -> None:
    token = repo.create_key(
        "ops",
        "admin",
        resources=["raw", "scratch"],
        expires_in=3600,
        ai=repolib.AIPolicy(models=["fast"], max_tokens=256),
    ).token
    r = repolib.open("analytics", key=token)
    for kwargs in (
        {"resources": ["local"]},
        {"expires_in": 7200},
        {"ai": True},
        {"ai": repolib.AIPolicy(models=["smollm2"])},
        {"ai": repolib.AIPolicy(models=["fast"], max_tokens=1024)},
    ):
        with pytest.raises(repolib.AccessDenied, match="beyond itself"):
            r.create_key("x", "read", **kwargs)
    ok = r.create_key("ok", "read", ai=repolib.AIPolicy(models=["fast"], max_tokens=128))
    info = ok.info
    assert info.resources == ("raw", "scratch")  # defaults to the creator's scope
    assert info.expires_at is not None and info.expires_at <= r.whoami().expires_at  # type: ignore[union-attr]
    w = repolib.open("analytics", key=repo.create_key("ops2", "admin", resources=["raw"]).token)
    with pytest.raises(repolib.AccessDenied):
        w.update_key(ok.key_id, resources=["raw"])  # target is wider than this ADMIN key
    with pytest.raises(repolib.AccessDenied):
        w.revoke_key(ok.key_id)


def test_admin_key_attach_rules(repo: repolib.Repository, catalog: repolib.Catalog) -> None:
    r = repolib.open("analytics", key=repo.create_key("ops", "admin").token)
    for url, kwargs in (
        ("file:///etc", {}),
        ("/etc", {}),
        ("simplecache::s3://b", {"key": "k"}),
        ("s3://b", {}),
        ("s3://b", {"key": "k", "secret": "s", "ambient_credentials": True}),
    ):
        with pytest.raises(repolib.AccessDenied, match="only the admin secret"):
            r.add_storage("new", url, **kwargs)
    with pytest.raises(repolib.AccessDenied):
        r.add_llm("llm2", base_url="http://127.0.0.1:9/v1", models=["m"])
    info = r.add_storage("bucket2", "s3://bucket2", key="K2", secret="S2")
    assert info.name == "bucket2"
    assert r.resolve("bucket2").credentials == {"key": "K2", "secret": "S2"}
    # the admin secret can still unwrap what an ADMIN key attached
    assert catalog.repository("analytics").resolve("bucket2").credentials["key"] == "K2"
    with pytest.raises(repolib.AccessDenied):
        r.update_resource("bucket2", ambient_credentials=True)


def test_scoped_admin_key_keeps_what_it_attaches(repo: repolib.Repository) -> None:
    r = repolib.open("analytics", key=repo.create_key("ops", "admin", resources=["raw"]).token)
    r.add_storage("mine", "s3://mine", key="k", secret="s")
    assert {x.name for x in r.resources()} == {"raw", "mine"}
    assert r.resolve("mine").credentials["key"] == "k"


def test_ai_policy_values() -> None:
    p = repolib.AIPolicy(
        models=["a", "b"], max_tokens=100, rpm=10, token_budget=1000, budget_period="month"
    )
    assert repolib.AIPolicy.from_dict(p.to_dict()) == p
    assert repolib.AIPolicy(models=["a"], max_tokens=50).within(p) is False  # no budget
    assert repolib.AIPolicy(
        models=["a"], max_tokens=50, rpm=5, token_budget=10, budget_period="month"
    ).within(p)
    for bad in (
        {"max_tokens": 0},
        {"rpm": -1},
        {"budget_period": "week"},
        {"token_budget": True},
        {"models": [""]},
    ):
        with pytest.raises(repolib.ConfigError):
            repolib.AIPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(repolib.ConfigError):
        keys.coerce_ai("yes")


def _most_spent(budget: int, period: str, start: dt.date, days: int) -> int:
    """The most a budget lets a key spend in ``days`` whole UTC days from ``start``: its full
    budget in every one of its periods that overlaps the window."""
    periods = {
        (d.year, d.month) if period == "month" else d
        for d in (start + dt.timedelta(i) for i in range(days))
    }
    return budget * len(periods)


budgets = st.tuples(st.integers(1, 50_000), st.sampled_from(["day", "month"]))


@settings(max_examples=300, deadline=None)
@given(
    child=budgets,
    parent=budgets,
    start=st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 1)),
    days=st.integers(1, 70),
)
def test_a_child_budget_allows_no_more_than_its_creator_over_any_window(
    child: tuple[int, str], parent: tuple[int, str], start: dt.date, days: int
) -> None:
    c = repolib.AIPolicy(token_budget=child[0], budget_period=child[1])
    p = repolib.AIPolicy(token_budget=parent[0], budget_period=parent[1])
    if c.within(p):
        assert _most_spent(*child, start, days) <= _most_spent(*parent, start, days)


def test_an_admin_key_cannot_widen_a_budget_by_changing_its_period(
    repo: repolib.Repository,
) -> None:
    parent = repo.create_key(
        "ops", "admin", ai={"token_budget": 10_000, "budget_period": "month"}
    ).token
    r = repolib.open("analytics", key=parent)
    for ai in (
        {"token_budget": 10_000, "budget_period": "day"},
        {"token_budget": 323, "budget_period": "day"},  # 31 days x 323 > 10,000
        {"token_budget": 10_001, "budget_period": "month"},
        True,
        {"rpm": 5},
    ):
        with pytest.raises(repolib.AccessDenied, match="beyond itself"):
            r.create_key("child", "read", ai=ai)
    ok = r.create_key("child", "read", ai={"token_budget": 322, "budget_period": "day"})
    with pytest.raises(repolib.AccessDenied, match="beyond itself"):
        r.update_key(ok.key_id, ai={"token_budget": 10_000, "budget_period": "day"})
    daily = repolib.open(
        "analytics",
        key=repo.create_key(
            "ops2", "admin", ai={"token_budget": 100, "budget_period": "day"}
        ).token,
    )
    daily.create_key("m", "read", ai={"token_budget": 100, "budget_period": "month"})
    with pytest.raises(repolib.AccessDenied, match="beyond itself"):
        daily.create_key("m2", "read", ai={"token_budget": 101, "budget_period": "month"})


def test_listings_render_as_html_tables_in_notebooks(
    repo: repolib.Repository, catalog: repolib.Catalog
) -> None:
    from IPython.core.formatters import DisplayFormatter

    issued = repo.create_key("<b>nb</b>", "read", resources=["raw"])
    listings = (
        repo.keys(),
        repo.resources(),
        catalog.keys("analytics"),
        catalog.resources("analytics"),
        repo.resources(kind="storage"),
    )
    for listing in listings:
        assert isinstance(listing, list)  # the API stays a list
        bundle, _ = DisplayFormatter().format(listing)  # what Jupyter shows
        page = bundle["text/html"]
        assert page.startswith("<table>") and page.count("<tr>") == len(listing) + 1
        assert issued.token not in page and "<b>" not in page
    keys_page = DisplayFormatter().format(repo.keys())[0]["text/html"]
    assert "&lt;b&gt;nb&lt;/b&gt;" in keys_page and issued.info.masked in keys_page
    assert "<td>read</td>" in keys_page and "<td>raw</td>" in keys_page
    resources_page = DisplayFormatter().format(repo.resources())[0]["text/html"]
    assert "<td>s3://bucket/raw</td>" in resources_page and S3_SECRET not in resources_page
    assert repo.keys() == list(repo.keys()) and repo.keys()[0].key_id
    empty = repolib.KeyList()
    assert "no keys" in empty._repr_html_()
