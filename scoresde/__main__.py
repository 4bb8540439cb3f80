"""`python -m scoresde ...` runs the command line (also under `torchrun -m scoresde`)."""
from scoresde.cli.main import main


if __name__ == "__main__":
    main()
