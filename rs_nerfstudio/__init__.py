"""rs_nerfstudio: randomized smoothing as a signed distance function, a nerfstudio method (rs-sdf)."""
