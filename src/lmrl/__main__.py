from lmrl.cli import main

main()
