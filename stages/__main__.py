from stages.entry import main

main()
