"""The protocol core stays pure (design.md section 4), and every module imports on its own."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import xchanged

FORBIDDEN = {"asyncio", "zmq", "zeroconf", "sqlite3", "subprocess", "time", "socket", "threading", "psutil",
             "pynvml", "os", "xchanged.runtime"}
PROTOCOL = Path(xchanged.__file__).parent / "protocol"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module and node.module.startswith("runtime"):
                names.add("xchanged.runtime")
            elif node.level >= 2 and (node.module or "").startswith("runtime"):
                names.add("xchanged.runtime")
            elif not node.level:
                names.add(node.module or "")
    return names


def test_protocol_imports_no_io_clock_or_runtime():
    offenders = {}
    for path in PROTOCOL.glob("*.py"):
        bad = {name for name in imported_modules(path)
               if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_each_module_imports_alone():
    modules = [m.name for m in pkgutil.walk_packages(xchanged.__path__, "xchanged.")
               if not m.name.endswith("__main__")]
    assert "xchanged.protocol.node" in modules
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for module in modules:
        result = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True)
        assert result.returncode == 0, f"{module}: {result.stderr}"
