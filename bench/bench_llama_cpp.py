"""Real llama.cpp for the GGUF checks: build it once into a cache folder, then run the llama.cpp tests and the
README's "Quantize & deploy" commands against it.

    python bench/bench_llama_cpp.py [--cache ~/.cache/slm-blocks/llama.cpp] [--build-only] [--no-tests]

What it builds (nothing of it is committed; CI does not need it, the tests skip without it):
- a llama-cpp-python wheel from its source distribution (LLAMA_CPP_PYTHON below) into CACHE/wheels, installed
  into this Python: `import llama_cpp` then works for tests/compress/test_gguf_llama_cpp.py and bench_generate.py;
- the `llama-completion` command line tool from the llama.cpp sources vendored in that same distribution, into
  CACHE/bin: the README's `llama-completion -m FILE -p "ROMEO:" -n 200` is run as written.
CMAKE_ARGS: a portable AVX2 build. These machines advertise AMX, and a native (-march=native) build dies with
SIGILL at the first matmul. Compiling takes 15-25 minutes on 2 cores for the wheel, about as long for the tool.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
              "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF")
DEFAULT_CACHE = Path(os.environ.get("SLM_LLAMA_CPP_CACHE", Path.home() / ".cache" / "slm-blocks" / "llama.cpp"))


def run(cmd, **kw):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t = time.time()
    subprocess.run([str(c) for c in cmd], check=True, **kw)
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def jobs() -> str:
    return str(os.cpu_count() or 2)


def build_wheel(cache: Path) -> Path:
    wheels = sorted(glob.glob(str(cache / "wheels" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl")))
    if not wheels:
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": jobs()}
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python", "-w",
             cache / "wheels", f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], env=env)
        wheels = sorted(glob.glob(str(cache / "wheels" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl")))
    return Path(wheels[-1])


def install_wheel(wheel: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode == 0 and probe.stdout.strip() == LLAMA_CPP_PYTHON:
        return
    # its Python dependencies (numpy, jinja2, diskcache, typing-extensions) from the index as usual
    run([sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps", wheel])
    run([sys.executable, "-m", "pip", "install", "diskcache>=5.6.1", "jinja2>=2.11.3", "numpy>=1.20.0",
         "typing-extensions>=4.5.0"])


def build_cli(cache: Path) -> Path:
    """llama-completion from the llama.cpp sources inside the llama-cpp-python source distribution."""
    exe = cache / "bin" / "llama-completion"
    if exe.is_file():
        return exe
    src = cache / "src"
    tree = src / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not tree.is_dir():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", src,
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}"])
        with tarfile.open(src / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as tar:
            tar.extractall(src, filter="data")
    build = cache / "build-tools"
    run(["cmake", "-S", tree / "vendor" / "llama.cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
         "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF",
         "-DLLAMA_BUILD_SERVER=OFF", *CMAKE_ARGS.replace("-DLLAVA_BUILD=OFF", "").split()])
    run(["cmake", "--build", build, "--target", "llama-completion", "-j", jobs()])
    exe.parent.mkdir(parents=True, exist_ok=True)
    (build / "bin" / "llama-completion").replace(exe)
    return exe


def check_readme_commands(exe: Path, workdir: Path) -> None:
    """Train a small run, export it as the README does, and run the README's llama.cpp command on it, asking for
    more tokens than the trained context (the abort this guards against)."""
    run_dir, out = workdir / "runs" / "shakespeare", workdir / "exports" / "gguf"
    data = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not (run_dir / "run.json").is_file():
        run([sys.executable, "-m", "slm_blocks", "train", "--preset", "tiny-char", "--data", data, "--tokenizer",
             "char", "--max-steps", "200", "--no-mlflow", "--out", run_dir], cwd=ROOT)
    for quant in ("q8_0", "f16"):
        folder = out.with_name(f"gguf-{quant}")
        run([sys.executable, "-m", "slm_blocks", "export", run_dir, "--format", "gguf", "--quant", quant, "--out",
             folder, "--overwrite"], cwd=ROOT)
        gguf = next(folder.glob("*.gguf"))
        for extra in ([], ["--context-shift"]):
            cmd = [exe, "-m", gguf, "-p", "ROMEO:", "-n", "400", "-no-cnv", "--temp", "0.8", "-t", "2", *extra]
            print("$", " ".join(str(c) for c in cmd), flush=True)
            proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise SystemExit(f"llama-completion failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            print(proc.stdout[:400].rstrip() + "\n  ...", flush=True)
            print("  " + "\n  ".join(ln for ln in proc.stderr.splitlines()
                                     if "n_ctx" in ln or "context" in ln or "eval time" in ln)[:1200], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-tests", action="store_true", help="skip pytest; still run the README commands")
    args = ap.parse_args()
    cache = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    install_wheel(build_wheel(cache))
    exe = build_cli(cache)
    if args.build_only:
        return
    if not args.no_tests:
        run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "tests/compress/test_gguf_llama_cpp.py",
             "tests/compress/test_gguf.py::test_llama_cpp_runs_the_file_like_the_model"], cwd=ROOT)
    check_readme_commands(exe, cache / "readme-check")


if __name__ == "__main__":
    main()
