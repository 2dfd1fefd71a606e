"""An example executor for unpaired: each run is a worker process started through a launcher command."""
