"""Raw traces: flat binary .dat files, .raw.kwd HDF5 files, klusta PRM parameter files."""
