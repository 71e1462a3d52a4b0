"""The daemon's configuration: the settings, where they are read from, and their validation.

This is the only package that reads the environment. `load()` builds one frozen `Config` from
three layers, each later one overriding the earlier ones key by key:

1. the TOML file (`sidecar.toml` by default; optional unless `required`), in the Go
   Sidecar's OLD layout: sections `[sidecar]`, `[docker_discovery]`, `[static_discovery]`,
   `[services]`, `[haproxy]`, `[listeners]`. Every setting has a key there, and unlike Go
   OLD, `[sidecar] logging_level` is honoured. Go's `stats_addr` is accepted so that a Go
   file loads, and reported by `notices()` as ignored. An unknown section or key is an error.
2. environment variables, under the Go Sidecar's NEW names (`ENV_VARS`). A variable that is
   set but empty counts as set, as in Go (`HAPROXY_BIND_IP=` means all interfaces), except
   that an empty list variable is an empty list. Lists split on commas and whitespace, both
   trimmed; booleans are Go `ParseBool` spellings; integers are decimal; durations are Go
   syntax (`"50ms"`, `"1m30s"`, `"0"`), as in the file.
3. command-line overrides, passed in by the CLI as `{"section.key": value}` (`FLAGS` names
   the Go flags; `--cluster-ip` and `--discover` replace the whole list).

No unprefixed fallbacks. Go's envconfig reads `FOO` whenever `P_FOO` is unset, so variables
set for other reasons reconfigure the Go daemon: `USER` (the login name) becomes the HAProxy
user, `CONFIG_FILE` feeds both the static file and the HAProxy config, `BIND_IP` the HAProxy
bind address, `URL` the Docker URL (spec `sidecar-behaviour.md` §9.1, §12 item 22). Here only
the names in `ENV_VARS` are read; every other variable, prefixed or not, is ignored.

Every value is validated at start-up. A `ConfigError` lists every problem found, each naming
the setting, where its value came from (the file and its `[section] key`, the variable, or
the flag), the value, and what is allowed. Secrets are never printed.

Three rooms, each importing only the ones below it (import-linter holds it): `values`
(Go-syntax values and the checks of one value), `sections` (the section models and
`Config`), `layers` (file, environment and flags into a `Config`, with the problem messages).
"""

from sidecar.config.layers import (
    ENV_VARS,
    ConfigError,
    config_path,
    describe,
    load,
    notices,
    sources,
)
from sidecar.config.sections import (
    Config,
    DockerDiscoverySection,
    HaproxySection,
    ListenersSection,
    ServicesSection,
    SidecarSection,
    StaticDiscoverySection,
)
from sidecar.config.values import format_duration, parse_duration

__all__ = [
    "ENV_VARS",
    "Config",
    "ConfigError",
    "DockerDiscoverySection",
    "HaproxySection",
    "ListenersSection",
    "ServicesSection",
    "SidecarSection",
    "StaticDiscoverySection",
    "config_path",
    "describe",
    "format_duration",
    "load",
    "notices",
    "parse_duration",
    "sources",
]
