"""cluster.yaml and configs/cluster.local.yaml: valid for Ray's cluster launcher, and secure.

Validation follows `ray up` (``commands._bootstrap_config``): ``prepare_config`` merges the provider's
defaults, then ``validate_config`` applies Ray's own ``ray-schema.json``; only the provider's cloud
calls (credentials, instance-type lookups) are left out. The rayrec rules are checked on that
prepared config, so a key dropped from the file cannot hide behind a default of Ray's, and every
rule is shown to fail on a copy of the file with the matching mistake.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"cloud": REPO / "cluster.yaml", "local": REPO / "configs" / "cluster.local.yaml"}
CHECKOUT = "/home/ray/rayrec"
TORCH_PIN = "torch==2.13.0"
SEPARATORS = {";", "&&", "||", "|"}
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load(CONFIGS[name].read_text())


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` validates it."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def ray_starts(command: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, arguments) of every `ray start` in one shell command line.

    Each entry of a *_start_ray_commands list runs in a shell of its own, so only exports made
    earlier in the same line (or assignments prefixed to `ray start`) reach Ray.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    exported: dict[str, str] = {}
    starts = []
    simple: list[str] = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            simple.append(token)
            continue
        words, simple = simple, []
        inline = {}
        while words and ASSIGNMENT.match(words[0]):
            key, value = ASSIGNMENT.match(words[0]).groups()
            inline[key] = value
            words = words[1:]
        if words[:1] == ["export"]:
            exported.update(m.groups() for w in words[1:] if (m := ASSIGNMENT.match(w)))
        elif len(words) >= 2 and Path(words[0]).name == "ray" and words[1] == "start":
            starts.append(({**exported, **inline}, words[2:]))
    return starts


def pip_installs(command: str) -> list[list[str]]:
    """Arguments of every `pip install` in a shell command line (branches of an `if` included)."""
    words = shlex.split(command.replace(";", " ; "))
    found = []
    for i, word in enumerate(words[:-1]):
        if Path(word).name in ("pip", "pip3") and words[i + 1] == "install":
            args = []
            for w in words[i + 2 :]:
                if w in (";", "&&", "||", "|", "fi", "else", "then"):
                    break
                args.append(w)
            found.append(args)
    return found


def node_roles(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, node type) pairs: the head, then every worker type. The local provider has one node
    type for both, as Ray's prepare_local makes it."""
    head = config["head_node_type"]
    workers = [name for name in config["available_node_types"] if name != head] or [head]
    return [("head", head)] + [("worker", name) for name in workers]


def setup_for(config: dict[str, Any], role: str, node_type: str) -> list[str]:
    """The setup commands a node really runs: a node type's own `worker_setup_commands` replace the
    merged global ones (prepare_config has already put `setup_commands` in front of those)."""
    if role == "head":
        return config["head_setup_commands"]
    node = config["available_node_types"][node_type]
    return node.get("worker_setup_commands", config["worker_setup_commands"])


def local_path(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else REPO / p  # `ray up` runs from the checkout root


def git_ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO).returncode == 0


def problems(config: dict[str, Any]) -> list[str]:
    """Every broken rayrec rule in a prepared cluster config; empty when it is fine."""
    found = []
    mounts = config.get("file_mounts", {})

    checkout = mounts.get(CHECKOUT)
    if checkout is None or local_path(checkout).resolve() != REPO:
        found.append(f"file_mounts must copy the checkout to {CHECKOUT}, got {checkout!r}")
    if ".gitignore" not in config.get("rsync_filter", []):
        found.append("rsync_filter must include .gitignore, or .venv/, data/ and runs/ are copied to every node")

    for role, node_type in node_roles(config):
        where = f"{role} ({node_type})"
        starts = [s for c in config[f"{role}_start_ray_commands"] for s in ray_starts(c)]
        if not starts:
            found.append(f"{where}: no `ray start` in {role}_start_ray_commands")
        for env, args in starts:
            if env.get("RAY_AUTH_MODE") != "token":
                found.append(f"{where}: `ray start` runs without RAY_AUTH_MODE=token in its shell")
            if "RAY_AUTH_TOKEN" in env:
                found.append(f"{where}: the token's value is written in the config (RAY_AUTH_TOKEN)")
            token_path = env.get("RAY_AUTH_TOKEN_PATH")
            if token_path not in mounts:
                found.append(f"{where}: RAY_AUTH_TOKEN_PATH={token_path!r} is not a file_mounts target")
            else:
                token_file = local_path(mounts[token_path])
                if token_file.resolve().is_relative_to(REPO) and not git_ignored(token_file):
                    found.append(f"the token file {mounts[token_path]} is inside the checkout and not git-ignored")
            if role == "head" and "--head" not in args:
                found.append(f"{where}: the head's `ray start` lacks --head")
            if role == "worker" and not any(a.startswith("--address") for a in args):
                found.append(f"{where}: a worker's `ray start` does not join the head (--address)")

        installs = [(i, args) for i, c in enumerate(setup_for(config, role, node_type)) for args in pip_installs(c)]
        torch_at = [i for i, args in installs if any(re.match(r"^torch\b", a) for a in args)]
        rayrec_at = [i for i, args in installs if any(a.rstrip("/") == CHECKOUT for a in args)]
        unpinned = [a for _, args in installs for a in args if re.match(r"^torch\b", a) and a != TORCH_PIN]
        if unpinned or not torch_at:
            found.append(f"{where}: setup must `pip install \"{TORCH_PIN}\"` (found {unpinned or 'none'})")
        if not rayrec_at:
            found.append(f"{where}: setup does not pip install rayrec from {CHECKOUT}")
        elif torch_at and max(torch_at) > min(rayrec_at):
            found.append(f"{where}: torch must be installed before rayrec, or rayrec's range picks the wheel")

    if config["provider"]["type"] != "local":
        types = config["available_node_types"]
        for group in ("cpu_workers", "gpu_workers"):
            if group not in types:
                found.append(f"worker group {group} is missing")
            elif not types[group].get("min_workers", 0) <= types[group]["max_workers"]:
                found.append(f"{group}: min_workers > max_workers")
        if "gpu_workers" in types and types["gpu_workers"].get("resources", {}).get("GPU", 0) < 1:
            found.append("gpu_workers must declare resources: {GPU: >= 1}")
    return found


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ray_accepts_the_config(name):
    config = prepared(load(name))
    assert config["cluster_name"].startswith("rayrec")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_follows_rayrec_rules(name):
    assert problems(prepared(load(name))) == []


def test_cloud_config_has_both_worker_groups_for_the_autoscaler():
    config = prepared(load("cloud"))
    assert (config["provider"]["type"], config["provider"]["region"]) == ("aws", "us-west-2")
    types = config["available_node_types"]
    assert {"cpu_workers", "gpu_workers"} <= set(types)
    assert types["gpu_workers"]["resources"]["GPU"] >= 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]


def test_local_config_lists_its_machines():
    provider = load("local")["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]


def test_ray_schema_rejects_a_misspelt_key():
    config = load("cloud")
    config["setup_command"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        prepared(config)


def test_ray_schema_rejects_a_node_type_without_resources():
    config = load("cloud")
    del config["available_node_types"]["cpu_workers"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        prepared(config)


def _edit_start(key: str, edit: Callable[[str], str]) -> Callable[[dict], None]:
    def apply(config: dict) -> None:
        config[key] = [edit(c) for c in config[key]]

    return apply


def _split_exports(config: dict) -> None:
    """The export as a list entry of its own: it runs in another shell and never reaches Ray."""
    commands = []
    for c in config["worker_start_ray_commands"]:
        if c.startswith("export"):
            export, rest = c.split(";", 1)
            commands += [export, rest]
        else:
            commands.append(c)
    config["worker_start_ray_commands"] = commands


def _drop_token_mount(config: dict) -> None:
    del config["file_mounts"]["/home/ray/.ray/auth_token"]


def _unpin_torch(config: dict) -> None:
    config["setup_commands"] = [c.replace(TORCH_PIN, "torch") for c in config["setup_commands"]]


def _rayrec_before_torch(config: dict) -> None:
    config["setup_commands"] = list(reversed(config["setup_commands"]))


def _token_in_repo_not_ignored(config: dict) -> None:
    config["file_mounts"]["/home/ray/.ray/auth_token"] = "configs/demo.yaml"  # tracked: never ignored


def _gpu_setup_without_rayrec(config: dict) -> None:
    config["available_node_types"]["gpu_workers"]["worker_setup_commands"] = [f'pip install "{TORCH_PIN}"']


def _gpu_min_above_max(config: dict) -> None:
    config["available_node_types"]["gpu_workers"].update(min_workers=3, max_workers=2)


def _no_gpu_group(config: dict) -> None:
    del config["available_node_types"]["gpu_workers"]


def _gpu_group_without_gpu(config: dict) -> None:
    config["available_node_types"]["gpu_workers"]["resources"] = {"CPU": 4}


def _no_start_commands(config: dict) -> None:
    del config["head_start_ray_commands"]  # Ray's defaults fill in a start without token auth


def _checkout_not_mounted(config: dict) -> None:
    del config["file_mounts"][CHECKOUT]


BOTH = ("cloud", "local")
MISTAKES = [
    ("head-auth-removed", BOTH, _edit_start("head_start_ray_commands", lambda c: c.replace("RAY_AUTH_MODE=token", "")),
     "head (", "RAY_AUTH_MODE=token"),
    ("worker-auth-disabled", BOTH,
     _edit_start("worker_start_ray_commands", lambda c: c.replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")),
     "worker (", "RAY_AUTH_MODE=token"),
    ("export-in-another-shell", BOTH, _split_exports, "worker (", "RAY_AUTH_MODE=token"),
    ("token-value-inline", BOTH, _edit_start("head_start_ray_commands", lambda c: c.replace(
        "RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token", "RAY_AUTH_TOKEN=abc")), "head (", "RAY_AUTH_TOKEN"),
    ("token-not-mounted", BOTH, _drop_token_mount, "worker (", "not a file_mounts target"),
    ("token-in-repo", BOTH, _token_in_repo_not_ignored, "token file", "not git-ignored"),
    ("no-start-commands", BOTH, _no_start_commands, "head (", "RAY_AUTH_MODE=token"),
    ("checkout-not-mounted", BOTH, _checkout_not_mounted, "file_mounts", CHECKOUT),
    ("torch-unpinned", BOTH, _unpin_torch, "worker (", TORCH_PIN),
    ("rayrec-before-torch", BOTH, _rayrec_before_torch, "head (", "before rayrec"),
    ("gpu-setup-override", ("cloud",), _gpu_setup_without_rayrec, "worker (gpu_workers)", "install rayrec"),
    ("gpu-min-above-max", ("cloud",), _gpu_min_above_max, "gpu_workers", "min_workers > max_workers"),
    ("gpu-group-missing", ("cloud",), _no_gpu_group, "gpu_workers", "missing"),
    ("gpu-group-without-gpu", ("cloud",), _gpu_group_without_gpu, "gpu_workers", "GPU"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,mutate,where,what",
    [pytest.param(name, m, where, what, id=f"{name}-{label}")
     for label, names, m, where, what in MISTAKES for name in names],
)  # fmt: skip
def test_a_broken_copy_is_caught(name, mutate, where, what):
    config = load(name)
    mutate(config)
    found = problems(prepared(config))
    assert any(where in p and what in p for p in found), found


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("path", [".ray/auth_token", "rayrec_cluster_token", "configs/auth_token"])
def test_token_files_written_inside_the_checkout_are_never_committed(path):
    assert git_ignored(REPO / path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_documented_token_path_is_outside_the_checkout(name):
    token = load(name)["file_mounts"]["/home/ray/.ray/auth_token"]
    assert not local_path(token).resolve().is_relative_to(REPO)
