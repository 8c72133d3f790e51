#!/usr/bin/env bash
# Mutation testing with mutmut, one module at a time (tests/README.md, "Mutation testing", has the figures).
#
#   tests/mutation.sh                 # every module below, smallest first
#   tests/mutation.sh backoff rules   # only these (names from the table below)
#   MUTMUT_JOBS=2 tests/mutation.sh   # parallel mutants (default 1: the machine's cores are shared)
#
# For each module, a scratch copy of the checkout (tracked and untracked files, as they are now) gets a setup.cfg
# that tells mutmut to mutate that one file and to run only the tests that exercise it; mutmut then runs every
# mutant against the tests that cover the mutated function. The survivors and the figures go to
# $MUTATION_OUT/<name>.txt (default: /tmp/galaxy_trio-mutation), and one line per module is printed:
#   <name> <file> killed=K survived=S total=T score=P%
# Run it from anywhere; it needs mutmut in the active environment (pip install -e ".[mutation]"; mutmut 3.x).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${MUTATION_OUT:-/tmp/galaxy_trio-mutation}
jobs=${MUTMUT_JOBS:-1}
mkdir -p "$out"

# name | file to mutate | tests that exercise it (pytest arguments) | mutants to run (fnmatch; default all)
modules=(
  "backoff|galaxy_trio/backoff.py|tests/test_helpers.py tests/mutation_kills"
  "profile|galaxy_trio/manager/profile.py|tests/manager/test_profile.py tests/manager/test_state.py tests/mutation_kills"
  "messages|galaxy_trio/aip/messages.py|tests/test_aip_codec.py tests/protocol tests/mutation_kills"
  "builders|galaxy_trio/aip/builders.py|tests/test_aip_codec.py tests/protocol tests/server/test_server_messages.py tests/server/test_server_registration.py tests/manager/test_phases.py tests/mutation_kills"
  "codec|galaxy_trio/aip/codec.py|tests/test_aip_codec.py tests/mutation_kills"
  "lease|galaxy_trio/fleet/lease.py|tests/fleet/test_lease.py tests/mutation_kills"
  "rules|galaxy_trio/server/rules.py|tests/server/test_server_rules.py tests/security/test_floods.py tests/mutation_kills"
  "client_protocol|galaxy_trio/aip/client_protocol.py|tests/protocol tests/mutation_kills"
  # The server's dispatch: the reader, frame handling and dispatch, the budget and send bounds (not registration,
  # keepalive or cleanup, whose mutants each need the whole server suite).
  # The config rules: the pure rules, the Structs' own validation (__post_init__ and the field loop it runs), and
  # the loader's bounds and error positions (size cap, alias-expansion cap, where a YAML error is reported, the
  # order problems are listed in); not the walk that maps values to lines, whose mutants each need most of
  # test_config.py.
  "config_rules|galaxy_trio/config/rules.py|tests/test_config.py tests/test_config_run.py tests/test_config_ufo.py tests/mutation_kills"
  "config_model|galaxy_trio/config/model.py|tests/test_config.py tests/test_config_run.py tests/test_config_ufo.py tests/mutation_kills|*ǁ__post_init____mutmut_* *x__struct_problems__mutmut_*"
  "config_loading|galaxy_trio/config/loading.py|tests/test_config.py tests/test_config_run.py tests/test_config_ufo.py tests/mutation_kills|*x_read_text__mutmut_* *ǁprepare__mutmut_* *x__alias_problem__mutmut_* *x__yaml_error__mutmut_* *x__char_at__mutmut_* *x__line__mutmut_* *ǁfail__mutmut_*"
  "dispatch|galaxy_trio/server/connection.py|tests/server tests/security/test_floods.py tests/control/test_server_metrics.py tests/mutation_kills|*ǁ_read_loop__mutmut_* *ǁ_handle__mutmut_* *ǁ_dispatch__mutmut_* *ǁ_on_command_results__mutmut_* *ǁ_on_task__mutmut_* *BoundedLinkǁsend_text__mutmut_* *ǁ_not_reading__mutmut_*"
)

wanted=("$@")
selected() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

for entry in "${modules[@]}"; do
  IFS='|' read -r name file tests filters <<<"$entry"
  selected "$name" || continue
  scratch=$(mktemp -d "/tmp/mutation-$name.XXXXXX")
  (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$scratch" 2>/dev/null || true)
  ln -s "$(cd "$repo/.." && pwd)/shared" "$scratch/shared"
  # mutmut reads [tool.mutmut] from pyproject.toml first: keep the project's pyproject, configure in setup.cfg.
  {
    echo "[mutmut]"
    echo "source_paths=galaxy_trio"
    echo "only_mutate=$file"
    # mutmut copies only the sources and tests/ into its mutants/ tree; the config tests also load the shipped file.
    echo "also_copy="
    echo "    config"
    # Two tests left out: a test that reads a module's imports sees mutmut's own (its trampoline): not a mutant's
    # doing; and a CLI run in a child process started from another directory, where the trampolines cannot find
    # mutmut's config.
    echo "pytest_add_cli_args="
    echo "    -p"
    echo "    no:cacheprovider"
    echo "    --deselect=tests/server/test_server_rules.py::test_rules_build_on_the_protocol_layer_only"
    echo "    --deselect=tests/test_config_ufo.py::test_run_with_ufos_constellation_brings_its_devices_up"
    echo "pytest_add_cli_args_test_selection="
    for t in $tests; do
      [ -e "$scratch/$t" ] && echo "    $t"
    done
  } >"$scratch/setup.cfg"
  (
    cd "$scratch"
    unset PYTHONPATH
    # The filters are fnmatch patterns, passed to mutmut unexpanded.
    (set -f; mutmut run --max-children "$jobs" $filters >"$out/$name.run.log" 2>&1) || true
    mutmut results --all true >"$out/$name.results.txt" 2>&1 || true
    mutmut export-cicd-stats >/dev/null 2>&1 || true
    cp mutants/mutmut-cicd-stats.json "$out/$name.stats.json" 2>/dev/null || true
    : >"$out/$name.survivors.diff"
    for m in $(grep -E ': survived$' "$out/$name.results.txt" | sed 's/: survived$//' | tr -d ' '); do
      mutmut show "$m" >>"$out/$name.survivors.diff" 2>&1 || true
    done
  )
  python - "$name" "$file" "$out/$name.results.txt" "$out/$name.run.log" <<'EOF'
import collections, sys
name, file, results, log = sys.argv[1:]
statuses = collections.Counter(
    line.rsplit(": ", 1)[1].strip() for line in open(results, errors="replace") if "__mutmut_" in line and ": " in line
)
statuses.pop("not checked", None)  # outside the filter: not run
if not statuses:
    if "could not find any test case for any mutant" in open(log, errors="replace").read():
        print(f"{name} {file} no mutants: mutmut mutates function bodies only, and this file has none")
    else:
        print(f"{name} {file} no figures (see {log})")
    raise SystemExit
# A mutant no selected test even runs ("no tests") counts as a survivor, as in mutmut's own score.
tested = sum(statuses.values()) - statuses["skipped"]
killed = statuses["killed"] + statuses["timeout"]
print(
    f"{name} {file} killed={killed} survived={statuses['survived']} no_tests={statuses['no tests']} "
    f"suspicious={statuses['suspicious']} total={tested} score={100 * killed / tested:.1f}%"
)
EOF
  rm -rf "$scratch"
done
