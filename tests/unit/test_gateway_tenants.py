"""Tenant keys: only hashes on disk, unknown and revoked keys refused, malformed tables loud."""

from __future__ import annotations

import json

import pytest

from gateway.tenants import ENV_TENANTS_FILE, ENV_TENANTS_JSON, AuthError, TenantConfigError, TenantTable, hash_key, main, new_tenant_block


def test_a_new_key_is_admitted_through_its_hash_only(tmp_path, capsys):
    key, block = new_tenant_block("acme", 5.0, 100.0)
    assert key not in block and hash_key(key) in block
    (tmp_path / "tenants.toml").write_text(block)
    tenant = TenantTable.load(tmp_path, environ={}).authenticate(key)
    assert tenant.name == "acme" and tenant.caps() == {"day": 5.0, "month": 100.0}
    assert main(["new", "beta", "--daily-usd", "2"]) == 0
    printed = capsys.readouterr().out
    assert '[tenants."beta"]' in printed and "daily_usd = 2.0" in printed


def test_unknown_missing_and_revoked_keys_are_refused(tmp_path):
    live, old = "rnlp-live-key", "rnlp-old-key"
    table = TenantTable.from_mapping({"tenants": {"acme": {"keys": [hash_key(live), hash_key(old)], "revoked": [hash_key(old)], "daily_usd": 1}}})
    assert table.authenticate(live).name == "acme"
    for key, says in ((old, "API key revoked"), ("rnlp-guess", "invalid API key"), ("", "missing API key"), (None, "missing API key")):
        with pytest.raises(AuthError, match=says):
            table.authenticate(key)
    with pytest.raises(AuthError, match="no tenants configured"):
        TenantTable.load(tmp_path, environ={}).authenticate(live)  # no file: everyone is refused


def test_json_in_the_environment_wins_over_the_file(tmp_path):
    inline = {"tenants": {"ci": {"keys": [hash_key("k")], "daily_usd": 0.5}}}
    table = TenantTable.load(tmp_path, environ={ENV_TENANTS_JSON: json.dumps(inline), ENV_TENANTS_FILE: str(tmp_path / "absent.toml")})
    assert table.authenticate("k").caps() == {"day": 0.5}


@pytest.mark.parametrize(
    "entry, says",
    [
        ({"keys": [hash_key("k")]}, "daily_usd is required"),
        ({"keys": [hash_key("k")], "daily_usd": -1}, "non-negative"),
        ({"keys": ["k"], "daily_usd": 1}, "sha256:<64 hex digits>"),
    ],
)
def test_malformed_tables_name_the_tenant_and_the_field(entry, says):
    with pytest.raises(TenantConfigError, match=f"'acme'.*{says}|{says}"):
        TenantTable.from_mapping({"tenants": {"acme": entry}})


def test_an_edited_file_is_reloaded_so_a_revoked_key_is_refused_without_a_restart(tmp_path):
    from gateway.tenants import TenantSource

    now = [0.0]
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.acme]\nkeys = ["{hash_key("k1")}"]\ndaily_usd = 1\n')
    source = TenantSource(tmp_path, environ={}, clock=lambda: now[0])
    assert source.table().authenticate("k1").name == "acme"
    path.write_text(f'[tenants.acme]\nkeys = []\nrevoked = ["{hash_key("k1")}"]\ndaily_usd = 1\n')
    assert source.table().authenticate("k1")  # within the recheck interval: the old table
    now[0] += 1.0
    with pytest.raises(AuthError, match="revoked"):
        source.table().authenticate("k1")
    path.write_text("[tenants.acme\n")  # broken: the last good table stays
    now[0] += 1.0
    with pytest.raises(AuthError, match="revoked"):
        source.table().authenticate("k1")
