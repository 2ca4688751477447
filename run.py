"""gapless: ``python run.py`` runs the service; ``python run.py --help`` lists the commands."""
from gapless.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
