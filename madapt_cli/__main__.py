from madapt_cli.cli import main

main()
