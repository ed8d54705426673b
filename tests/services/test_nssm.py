"""The generated NSSM PowerShell, read as text: every component, every parameter, the rules.

There is no PowerShell here, so the scripts are checked as text: what a reviewer would look for
(every `nssm set`, exit 78 stops, no dependency between our own services, no secret values).
"""

from __future__ import annotations

import re

import pytest

from brokersync.components import Component, components
from brokersync.services import POLICY, render_nssm, service_name

SAMPLE = [
    Component("producer", ("producer",), "Polls the broker on schedule into the event log"),
    Component("consumer-positions", ("consumer", "positions"), "Applies the user's positions"),
    Component("consumer-trades", ("consumer", "trades"), "Trade history"),
    Component("worker", ("worker",), "Delivers notifications", kill_mode_mixed=True),
]

# Every parameter install.ps1 must set on every run, with its exact value where it is fixed.
REQUIRED = {
    "Application": "$Python",
    "AppParameters": "('-m brokersync ' + $c.Args)",
    "AppDirectory": "$ProjectRoot",
    "DisplayName": "$c.DisplayName",
    "Description": "$c.Description",
    "Type": "'SERVICE_WIN32_OWN_PROCESS'",
    "Start": "'SERVICE_DELAYED_AUTO_START'",
    "AppStdout": "$log",
    "AppStderr": "$log",
    "AppStdoutCreationDisposition": "'4'",
    "AppStderrCreationDisposition": "'4'",
    "AppRotateFiles": "'1'",
    "AppRotateOnline": "'1'",
    "AppRotateSeconds": "'0'",
    "AppRotateBytes": f"'{POLICY.log_rotate_bytes}'",
    "AppRestartDelay": f"'{POLICY.restart_delay_s * 1000}'",
    "AppThrottle": f"'{POLICY.throttle_ms}'",
    "AppNoConsole": "'0'",
    "AppStopMethodSkip": "'0'",
    "AppStopMethodConsole": f"'{POLICY.stop_timeout_s * 1000}'",
    "AppStopMethodWindow": "'1500'",
    "AppStopMethodThreads": "'1500'",
    "AppKillProcessTree": "'1'",
}


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return render_nssm(SAMPLE)


def _loop_body(script: str) -> str:
    """The `foreach ($c in $Components) { ... }` block of install.ps1."""
    start = script.index("foreach ($c in $Components) {")
    depth, i = 0, script.index("{", start)
    for j in range(i, len(script)):
        depth += {"{": 1, "}": -1}.get(script[j], 0)
        if depth == 0:
            return script[i : j + 1]
    raise AssertionError("unbalanced foreach block")


def test_every_component_is_listed_in_every_script(files: dict[str, str]) -> None:
    for name in ("install.ps1", "status.ps1", "uninstall.ps1"):
        for c in SAMPLE:
            line = (f"@{{ Name = '{service_name(c)}'; Args = '{' '.join(c.args)}'; "
                    f"DisplayName = 'brokersync {c.name}'; ")
            assert line in files[name], f"{c.name} missing from {name}"


def test_the_real_registry_renders_every_component() -> None:
    items = components()
    script = render_nssm(items)["install.ps1"]
    assert script.count("@{ Name = 'brokersync-") == len(items)
    for c in items:
        assert f"Name = '{service_name(c)}'" in script


def test_quotes_in_descriptions_are_escaped(files: dict[str, str]) -> None:
    assert "Description = 'Applies the user''s positions'" in files["install.ps1"]


def test_install_sets_every_parameter_on_every_run(files: dict[str, str]) -> None:
    body = _loop_body(files["install.ps1"])
    # The `set` calls come after the install-if-missing block, not inside it: every run.
    after_install = body[body.index("updating  $name") :]
    for param, value in REQUIRED.items():
        call = f"Invoke-Nssm @('set', $name, '{param}', {value})"
        assert call in after_install, f"missing: {call}"
    assert "Invoke-Nssm @('install', $name, $Python)" in body
    assert "if (-not (Get-Service -Name $name -ErrorAction SilentlyContinue))" in body


def test_restart_on_crash_but_not_on_configuration_error(files: dict[str, str]) -> None:
    body = _loop_body(files["install.ps1"])
    assert "Invoke-Nssm @('set', $name, 'AppExit', 'Default', 'Restart')" in body
    assert "Invoke-Nssm @('set', $name, 'AppExit', '78', 'Exit')" in body
    assert POLICY.config_error_exit == 78
    # A long enough console stop for a graceful drain; a short restart delay and throttle
    # so that NSSM's Paused state (shown only while it waits to restart) never lasts.
    assert POLICY.stop_timeout_s >= 15
    assert 1000 <= POLICY.restart_delay_s * 1000 <= 30_000
    assert POLICY.throttle_ms <= 5000


def test_environment_is_one_variable_per_argument(files: dict[str, str]) -> None:
    script = files["install.ps1"]
    body = _loop_body(script)
    # Each list element becomes one argument of `nssm set NAME AppEnvironmentExtra K=V K=V`.
    assert "Invoke-Nssm (@('set', $name, 'AppEnvironmentExtra') + $Environment)" in body
    assert "$Environment = @($config.env | Where-Object { $_ -notlike 'BROKERSYNC_LOG_FILE=*' })" in script
    assert "$Environment += @('BROKERSYNC_LOG_FILE=true', 'PYTHONUNBUFFERED=1', 'PYTHONUTF8=1')" in script
    # The list comes from the validated .env, through `brokersync config env --json`.
    assert "& $Python -m brokersync config env --json" in script
    assert "$output = & nssm @NssmArgs 2>&1" in script  # an array splats one element per argument


def test_no_secret_or_value_is_printed_on_failure(files: dict[str, str]) -> None:
    script = files["install.ps1"]
    assert "$what = ($NssmArgs | Select-Object -First 3) -join ' '" in script
    assert 'throw "nssm $what failed' in script
    assert "Write-Host $Environment" not in script and "$Environment |" not in script
    assert not re.search(r"Write-\w+[^\n]*\$config\.env", script)


def test_depends_only_on_a_local_postgresql_service(files: dict[str, str]) -> None:
    script = files["install.ps1"]
    lines = [line.strip() for line in script.splitlines() if "DependOnService" in line]
    calls = [line for line in lines if line.startswith("Invoke-Nssm")]
    assert calls == [
        "Invoke-Nssm @('set', $name, 'DependOnService', $DependOn)",
        "Invoke-Nssm @('reset', $name, 'DependOnService')",  # clears a stale dependency
    ]
    assignments = [line.strip() for line in script.splitlines() if re.match(r"\s*\$DependOn = ", line)]
    assert assignments == ["$DependOn = ''", "$DependOn = $PostgresService", "$DependOn = $candidates[0].Name"]
    assert "} elseif ($config.database -eq 'local') {" in script
    assert "Get-Service -Name 'postgresql*'" in script
    for c in SAMPLE:  # never one of ours
        assert not any(service_name(c) in line for line in lines)


def test_install_and_uninstall_check_administrator_and_nssm(files: dict[str, str]) -> None:
    for name in ("install.ps1", "uninstall.ps1"):
        text = files[name]
        # Called at the top level, before the first nssm call.
        assert text.index("\nAssert-Administrator\nAssert-Nssm\n") < text.index("Invoke-Nssm @(")
    script = files["install.ps1"]
    assert "[Security.Principal.WindowsBuiltInRole]::Administrator" in script
    assert "Get-Command nssm" in script
    assert "choco install nssm" in script and "2.24-101" in script
    assert "Assert-Administrator" not in files["status.ps1"].split("function Assert-Nssm")[1]


def test_uninstall_stops_then_removes_and_keeps_logs(files: dict[str, str]) -> None:
    script = files["uninstall.ps1"]
    assert script.index("Stop-Service -Name $name") < script.index("Invoke-Nssm @('remove', $name, 'confirm')")
    assert "Remove-Item" not in script


def test_status_shows_state_log_lines_and_brokersync_status(files: dict[str, str]) -> None:
    script = files["status.ps1"]
    assert "Get-Service -Name $name" in script
    assert "Get-Content -Path $log -Tail $Lines" in script
    assert "& $Python -m brokersync status" in script
    assert "$log = Join-Path $LogDir ($name + '.console.log')" in files["install.ps1"]
    assert "$log = Join-Path $LogDir ($name + '.console.log')" in script


def test_scripts_are_ascii_and_balanced(files: dict[str, str]) -> None:
    for name, text in files.items():
        text.encode("ascii")  # Windows PowerShell 5.1 reads BOM-less files as ANSI
        if name.endswith(".ps1"):
            code = re.sub(r"'(?:[^']|'')*'", "''", text)  # drop single-quoted literals
            code = re.sub(r'"(?:[^"`]|`.)*"', '""', code)
            code = "\n".join(line.split("#", 1)[0] for line in code.splitlines())
            for open_, close in ("{}", "()", "[]"):
                assert code.count(open_) == code.count(close), f"{name}: unbalanced {open_}{close}"


def test_bat_launchers_are_thin_and_crlf(files: dict[str, str]) -> None:
    for name in ("install", "status", "uninstall"):
        bat = files[f"{name}.bat"]
        assert bat.endswith("\r\n") and "\n" not in bat.replace("\r\n", "")
        assert f'-ExecutionPolicy Bypass -File "%~dp0{name}.ps1" %*' in bat


def test_arguments_that_cannot_be_a_command_line_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot go into a service command line"):
        render_nssm([Component("bad", ("consumer", "a b"), "x")])
