from notify.cli import main

main(prog_name="notify")  # `python -m notify.cli` says "notify", as the command does
