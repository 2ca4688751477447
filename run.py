"""gapless: ``python run.py`` runs the service; ``python run.py --help`` lists the commands."""
if __name__ == "__main__":
    # imported here, not at the top: download workers are spawned processes that run this file again (as
    # __mp_main__), and must not pay for the command line's imports
    from gapless.cli import main
    raise SystemExit(main())
