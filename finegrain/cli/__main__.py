from finegrain.cli import main

main()
