from training_agent.cli import main

main()
