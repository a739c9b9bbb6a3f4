"""Applications built on mmzoo's parts: `mmzoo demo` (demo.py)."""
