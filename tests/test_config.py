"""Configuration loading: every problem reported with file, key path and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub.config import ConfigError, load_config, resolve_passwords


def edit(path: Path, fn: object) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def issues_of(cfg: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    return [str(i) for i in exc.value.issues]


def test_demo_config_is_valid(demo_config: Path) -> None:
    """The shipped demo configuration loads."""
    site = load_config(demo_config)
    assert site.site.demo
    assert {u.username for u in site.users} >= {
        "operator", "dispatcher", "civil-affairs", "reviewer", "admin"
    }


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        ("cameras.yaml", lambda d: d["cameras"][0].update(colour="red"),
         "cameras.yaml: cameras[0].colour: Extra inputs are not permitted"),
        ("cameras.yaml", lambda d: d["cameras"][0].update(grid="nowhere"),
         "cameras.yaml: cameras[0].grid: unknown grid 'nowhere'"),
        ("cameras.yaml", lambda d: d["cameras"][0]["source"].update(type="carrier-pigeon"),
         "cameras.yaml: cameras[0].source"),
        ("departments.yaml", lambda d: d["departments"][0]["handles"].append("fire"),
         "departments.yaml: departments[0].handles[2]: unknown incident type 'fire'"),
        ("grids.yaml", lambda d: d["grids"][1].update(parent="atlantis"),
         "grids.yaml: grids[1].parent: unknown grid 'atlantis'"),
        ("grids.yaml", lambda d: d["grids"][2].update(level="city"),
         "grids.yaml: grids[2].level: 'city' cannot sit under 'district'"),
        ("grids.yaml",
         lambda d: d["grids"][0].update(polygon={"type": "Point", "coordinates": [1, 2]}),
         "grids.yaml: grids[0].polygon: Value error, must be a GeoJSON Polygon"),
        ("users.yaml", lambda d: d["users"][1].update(role="king"),
         "users.yaml: users[1].role: Input should be"),
        ("users.yaml", lambda d: d["users"][3].update(department="space-force"),
         "users.yaml: users[3].department: unknown department 'space-force'"),
        ("rules.yaml", lambda d: d.update(detect_fps="fast"),
         "rules.yaml: detect_fps: Input should be a valid number"),
        ("rules.yaml", lambda d: d["person_down"].update(min_s=-1),
         "rules.yaml: person_down.min_s: Input should be greater than 0"),
    ],
)
def test_bad_config_names_file_key_and_reason(
    demo_config: Path, file: str, change: object, expected: str
) -> None:
    """Each kind of mistake is reported with the file, the key path and why."""
    edit(demo_config / file, change)
    found = issues_of(demo_config)
    assert any(i.startswith(expected) for i in found), found


def test_all_problems_reported_at_once(demo_config: Path) -> None:
    """Several mistakes in several files are all reported in one pass."""
    edit(demo_config / "cameras.yaml", lambda d: d["cameras"][0].update(grid="nowhere"))
    edit(demo_config / "users.yaml", lambda d: d["users"][0].update(shoe_size=44))
    found = issues_of(demo_config)
    assert any("cameras[0].grid" in i for i in found)
    assert any("users[0].shoe_size" in i for i in found)


def test_invalid_yaml_gives_line(demo_config: Path) -> None:
    """A YAML syntax error names the file and the line."""
    (demo_config / "departments.yaml").write_text("departments: [\n  {id: x\n")
    found = issues_of(demo_config)
    assert any(i.startswith("departments.yaml: line ") for i in found), found


def test_missing_and_unknown_files(demo_config: Path) -> None:
    """A required file missing and a stray YAML file are both reported."""
    (demo_config / "users.yaml").unlink()
    (demo_config / "extras.yaml").write_text("a: 1\n")
    found = issues_of(demo_config)
    assert "users.yaml: missing file" in found
    assert any(i.startswith("extras.yaml: unknown file") for i in found)


def test_demo_password_default_and_override(demo_config: Path) -> None:
    """Demo users get 'demo', or GRIDHUB_DEMO_PASSWORD when it is set."""
    site = load_config(demo_config)
    assert set(resolve_passwords(site, env={}).values()) == {"demo"}
    assert set(resolve_passwords(site, env={"GRIDHUB_DEMO_PASSWORD": "s3cret-pw"}).values()) == {
        "s3cret-pw"
    }


def test_outside_demo_weak_passwords_refused(demo_config: Path) -> None:
    """Outside the demo, empty or default passwords stop start-up; strong ones from env pass."""
    edit(demo_config / "site.yaml", lambda d: d.update(demo=False))
    edit(demo_config / "users.yaml",
         lambda d: [u.update(password_env=f"PW_{i}") for i, u in enumerate(d["users"])])
    site = load_config(demo_config)
    n = len(site.users)
    with pytest.raises(ConfigError) as exc:
        resolve_passwords(site, env={"PW_0": "demo"})
    assert len(exc.value.issues) == n
    strong = {f"PW_{i}": f"correct-horse-{i}-battery" for i in range(n)}
    assert len(resolve_passwords(site, env=strong)) == n


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, timeout=120,
        env=env,
    )


def test_check_config_cli_exit_codes(demo_config: Path) -> None:
    """check-config exits 0 on a good folder and 2 with every problem on stderr on a bad one."""
    ok = run_cli("check-config", str(demo_config))
    assert ok.returncode == 0, ok.stderr
    edit(demo_config / "cameras.yaml", lambda d: d["cameras"][0].update(grid="nowhere"))
    edit(demo_config / "rules.yaml", lambda d: d.update(detect_fps=0))
    bad = run_cli("check-config", str(demo_config))
    assert bad.returncode == 2
    assert "cameras.yaml: cameras[0].grid: unknown grid 'nowhere'" in bad.stderr
    assert "rules.yaml: detect_fps: Input should be greater than 0" in bad.stderr


def test_run_refuses_bad_config(demo_config: Path, tmp_path: Path) -> None:
    """gridhub run exits 2 on a bad config, before listening."""
    edit(demo_config / "site.yaml", lambda d: d.update(demo=False))
    res = run_cli("run", "--config", str(demo_config), "--data", str(tmp_path / "d"),
                  "--port", "0")
    assert res.returncode == 2
    assert "default password" in res.stderr
