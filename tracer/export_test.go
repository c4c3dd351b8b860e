package tracer

// LogScanRefused is logScanRefused, for the tests.
var LogScanRefused = logScanRefused
