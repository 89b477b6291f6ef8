"""`python -m runner_mock`: run the fake Responses API (see `python -m runner_mock --help`)."""

from runner_mock.cli import main

if __name__ == "__main__":
    main()
