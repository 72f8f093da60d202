from zstag.cli import main

main()
