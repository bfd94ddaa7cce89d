"""What the CLI tests share."""

from saescope.cli import main


def one_line_error(capsys, argv) -> str:
    """Run the CLI on argv, expecting exit status 2 and one line on stderr; that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("saescope: error: ")
    return err
