from training_core.cli import main

main()
