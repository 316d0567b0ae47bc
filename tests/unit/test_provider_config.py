"""hosts.toml for rented hosts and [providers.NAME]: what each cloud needs, checked when the file is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubox.config import ProviderSettings, load_hosts
from gpubox.errors import BadInput, ConfigError
from gpubox.remote.providers.cloud import gpu_matches, host_from_instance_name, instance_name

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _load(folder: Path, text: str):  # type: ignore[no-untyped-def]
    (folder / "hosts.toml").write_text(text)
    return load_hosts(folder)


BAD = [
    pytest.param(
        '[hosts.l]\nprovider = "lambda"\ninstance_type = "gpu_1x_a10"\n',
        "hosts.toml:1: hosts.l: a lambda host needs ssh_key_name: the name of an SSH key in your Lambda account",
        id="lambda-without-ssh-key-name",
    ),
    pytest.param(
        '[hosts.l]\nprovider = "lambda"\nssh_key_name = "me"\n',
        'hosts.toml:1: hosts.l: a lambda host needs instance_type (such as "gpu_1x_a100_sxm4") or gpu',
        id="lambda-without-type-or-gpu",
    ),
    pytest.param(
        '[hosts.v]\nprovider = "vast"\nmax_price_per_hour = 1\n',
        'hosts.toml:1: hosts.v: a vast host needs gpu: the GPU model to rent, such as "RTX 4090"',
        id="vast-without-gpu",
    ),
    pytest.param(
        '[hosts.v]\nprovider = "vast"\ngpu = "RTX 4090"\nprice_per_hour = 0.4\n',
        'hosts.toml:4: hosts.v.price_per_hour: not used by provider "vast": gpubox reads the price from its API '
        "(cap it with max_price_per_hour)",
        id="price-on-a-rented-host",
    ),
    pytest.param(
        '[hosts.v]\nprovider = "runpod"\ngpu = "H100"\nhostname = "1.2.3.4"\n',
        'hosts.toml:4: hosts.v.hostname: not used by provider "runpod": gpubox learns the address from its API',
        id="hostname-on-a-rented-host",
    ),
    pytest.param(
        '[hosts.v]\nprovider = "vast"\ngpu = "RTX 4090"\ninstance_type = "x"\n',
        'hosts.toml:4: hosts.v.instance_type: not used by provider "vast" (only by lambda)',
        id="lambda-key-on-vast",
    ),
    pytest.param(
        '[hosts.s]\ngpu = "A100"\n',
        'hosts.toml:2: hosts.s.gpu: not used by provider "ssh" (only for hosts gpubox rents: provider = "lambda", '
        '"vast" or "runpod")',
        id="renting-key-on-ssh-host",
    ),
    pytest.param(
        '[hosts.r]\nprovider = "runpod"\ngpu = "H100"\ncloud_type = "cheap"\n',
        'hosts.toml:4: hosts.r.cloud_type: expected one of "secure", "community", "all", got "cheap"',
        id="bad-cloud-type",
    ),
    pytest.param(
        '[hosts.r]\nprovider = "runpod"\ngpu = "H100"\ngpu_count = 0\n',
        "hosts.toml:4: hosts.r.gpu_count: expected an integer 1-16, got 0",
        id="zero-gpus",
    ),
    pytest.param(
        '[hosts.r]\nprovider = "vast"\ngpu = "H100"\nlaunch_timeout = -5\n',
        "hosts.toml:4: hosts.r.launch_timeout: expected a number > 0, got -5",
        id="negative-launch-timeout",
    ),
    pytest.param(
        '[providers.aws]\napi_key_env = "AWS"\n',
        "hosts.toml:1: providers.aws: unknown provider (the cloud providers are lambda, vast, runpod)",
        id="unknown-provider-table",
    ),
    pytest.param(
        '[providers.lamda]\napi_key_env = "X"\n',
        'hosts.toml:1: providers.lamda: unknown provider; did you mean "lambda"?',
        id="misspelt-provider-table",
    ),
    pytest.param(
        '[providers.vast]\napi_url = "ftp://example.com"\n',
        'hosts.toml:2: providers.vast.api_url: expected an http(s) URL such as "https://proxy.example.com/api/v1" '
        '(no query, no user@), got "ftp://example.com"',
        id="bad-api-url",
    ),
    pytest.param(
        '[providers.vast]\napi_key = "VAST_API_KEY"\n',
        'hosts.toml:2: providers.vast.api_key: unknown key; did you mean "api_key_env"?',
        id="api-key-instead-of-api-key-env",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_rented_hosts_and_provider_tables(project: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(project, text)
    assert str(caught.value) == message


def test_a_key_pasted_into_api_key_env_is_refused_without_repeating_it(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(project, f'[providers.lambda]\napi_key_env = "{SECRET}"\n')
    message = str(caught.value)
    assert SECRET not in message
    assert message.startswith(
        "hosts.toml:2: providers.lambda.api_key_env: expected the NAME of an environment"
    )


def test_rented_hosts_get_their_provider_settings_and_defaults(project: Path) -> None:
    hosts = _load(
        project,
        '[providers.vast]\napi_key_env = "MY_VAST"\napi_url = "http://127.0.0.1:9/"\nrequest_timeout = 5\n'
        "[defaults]\nmax_price_per_hour = 2\n"
        '[hosts.v]\nprovider = "vast"\ngpu = "RTX 4090"\n'
        '[hosts.l]\nprovider = "lambda"\nssh_key_name = "me"\ngpu = "A100"\n'
        '[hosts.s]\nhostname = "box"\n',
    )
    vast, lam, ssh = hosts.get("v"), hosts.get("l"), hosts.get("s")
    assert vast.provider_settings() == ProviderSettings(
        "vast", "MY_VAST", "http://127.0.0.1:9", request_timeout=5.0, source="hosts.toml:1"
    )
    assert lam.provider_settings().api_key_env == "LAMBDA_API_KEY"
    assert lam.provider_settings().api_url == "https://cloud.lambda.ai/api/v1"
    assert (vast.max_price_per_hour, lam.max_price_per_hour, ssh.max_price_per_hour) == (2.0, 2.0, None)
    assert (vast.spec.rents, lam.spec.rents, ssh.spec.rents) == (True, True, False)
    assert set(hosts.providers) == {"vast", "lambda"}


def test_a_missing_key_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUBOX_NOT_SET_KEY", raising=False)
    settings = ProviderSettings("runpod", "GPUBOX_NOT_SET_KEY", "https://api.runpod.io")
    with pytest.raises(BadInput, match="runpod: the API key variable GPUBOX_NOT_SET_KEY is not set"):
        settings.api_key()


@pytest.mark.parametrize(
    ("wanted", "offered", "matches"),
    [
        ("A100", "A100 SXM4", True),
        ("A100", "NVIDIA A100 80GB PCIe", True),
        ("a100", "A100 PCIE", True),
        ("RTX 4090", "RTX_4090", True),
        ("RTX 4090", "NVIDIA GeForce RTX 4090", True),
        ("H100 SXM", "H100 PCIe", False),
        ("A10", "A100 SXM4", False),
        ("RTX 4090", "RTX 4080", False),
    ],
)
def test_gpu_names_match_loosely_but_not_wrongly(wanted: str, offered: str, matches: bool) -> None:
    assert gpu_matches(wanted, offered) is matches


def test_instance_names_lead_back_to_their_host() -> None:
    name = instance_name("lambda-a100")
    assert name.startswith("gpubox-lambda-a100-") and len(name) == len("gpubox-lambda-a100-") + 6
    assert host_from_instance_name(name) == "lambda-a100"
    assert host_from_instance_name("gpubox-box-zzzzzz") is None
    assert host_from_instance_name("my-notebook") is None
