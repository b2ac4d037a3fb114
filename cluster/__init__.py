"""Distribution: Ray actors that compute meta-gradient shares, and the driver that averages them."""
