"""What SQLite's speedtest1 (3.40.1, Debian 12) prints, for the tests that run it in a guest."""

# The main test set, in the order speedtest1 runs it (testset_main in speedtest1.c).
MAIN_TESTS = [100, 110, 120, 130, 140, 142, 145, 150, 160, 161, 170, 180, 190, 200, 210, 230,
              240, 250, 260, 270, 280, 290, 300, 310, 320, 400, 410, 500, 510, 520, 980, 990]
