from stmed.cli import main

main()
