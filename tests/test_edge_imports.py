"""The edge runtime must import without torch (devices that only run the daemon lack it)."""
import subprocess
import sys


def test_edge_modules_do_not_import_torch():
    code = ("import sys, pkgutil, importlib, edge\n"
            "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
