"""The Kwik format (klusta / SpikeDetekt): .kwik, .kwx, .raw.kwd."""
