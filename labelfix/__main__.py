from labelfix.cli import main

main()
