"""scripts/patch_llama_cpp.py against the sdist make venv verified: every edit finds its text once,
a second run leaves the tree alone, and a tree whose text differs stops the build naming the file.

The compiled result is tested where it runs: tests/integration/test_adapter_serving.py checks that
the engine routes adapters per sequence and answers as alone."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.bundle.build import LLAMA_CMAKE_ARGS, LLAMA_CPP_PYTHON, cache_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "patch_llama_cpp.py"
TOP = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/"
PREFIX = f"{TOP}vendor/llama.cpp/"
NEEDED = ("include/llama.h", "src/llama-adapter.h", "src/llama-adapter.cpp", "src/llama-context.h",
          "src/llama-context.cpp", "src/llama-graph.h", "src/llama-graph.cpp")


def load_script():
    spec = importlib.util.spec_from_file_location("patch_llama_cpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path) -> Path:
    """The llama.cpp files the patch edits, and the package's CMakeLists.txt beside vendor/."""
    sdist = cache_dir() / "sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    assert sdist.is_file(), f"{sdist} missing: make venv caches the sdist it builds llama-cpp-python from"
    with tarfile.open(sdist) as archive:
        members = [archive.getmember(PREFIX + name) for name in NEEDED]
        members.append(archive.getmember(f"{TOP}CMakeLists.txt"))
        archive.extractall(tmp_path, members=members, filter="data")
    return tmp_path / PREFIX


def test_patch_applies_once_and_adds_the_routing_api(tree):
    script = load_script()
    before = {name: (tree / name).read_text() for name in NEEDED}
    assert script.patch(tree) is True
    after = {name: (tree / name).read_text() for name in NEEDED}
    assert all(after[name] != before[name] for name in NEEDED)
    header = after["include/llama.h"]
    assert "LLAMA_API void llama_set_adapters_lora_routing(struct llama_context * ctx, bool enabled);" in header
    assert "LLAMA_API void llama_set_adapter_lora_seq(" in header
    assert "LLAMA_API void llama_set_cpu_reference_kernels(struct llama_context * ctx, bool enabled);" in header
    assert after["src/llama-graph.cpp"].count("build_lora_route(lora.first") == 3  # mm, mm_id, token embeddings
    assert "return build_lora_stacked(it->second, cur, res);" in after["src/llama-graph.cpp"]  # dense weights: the stack
    assert "llama_lora_stack_ptr llama_lora_stack_build(const llama_adapter_loras & loras) {" in after["src/llama-adapter.cpp"]
    assert script.patch(tree) is False  # idempotent
    assert {name: (tree / name).read_text() for name in NEEDED} == after


def test_a_different_llama_cpp_stops_the_build_naming_the_file(tree):
    graph = tree / "src/llama-graph.cpp"
    graph.write_text(graph.read_text().replace("ab_cur = ggml_scale(ctx0, ab_cur, scale);", "ab_cur = scaled(ab_cur);"))
    done = subprocess.run([sys.executable, str(SCRIPT), str(tree)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "src/llama-graph.cpp" in done.stderr and "another llama.cpp version" in done.stderr
    assert "SLM Appliance" not in (tree / "include/llama.h").read_text()  # nothing half-patched


def test_the_sdist_run_turns_off_the_common_library_nothing_links(tree):
    top = tree.parents[1]
    cmake = top / "CMakeLists.txt"
    forced_on = '    set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)\n'
    assert forced_on in cmake.read_text()
    done = subprocess.run([sys.executable, str(SCRIPT), str(top)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = cmake.read_text()
    assert forced_on not in text
    assert '    set(LLAMA_BUILD_COMMON OFF CACHE BOOL "Build llama.cpp common library" FORCE)' in text
    assert "SLM Appliance" in (tree / "include/llama.h").read_text()


def test_bundles_name_the_wheel_folder_with_the_flags_setup_env_compiles_with():
    """appliance/bundle/build.py finds the cached wheel by the build id setup_env.sh computes from
    its CMAKE_ARGS: the two copies of the flags must agree."""
    script = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert f'LLAMA_CMAKE_ARGS="{LLAMA_CMAKE_ARGS}"\n' in script
