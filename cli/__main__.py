"""``python -m kv_cli ...`` runs the ``kv`` command; ``kv cluster up`` spawns nodes this way."""

from .main import run

if __name__ == "__main__":
    run()
