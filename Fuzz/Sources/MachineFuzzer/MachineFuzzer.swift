// libFuzzer entry point for a connection's state machine with a script on the path: client and
// server bytes, closes, timeouts and shutdowns, and a script whose every decision (answer, inject,
// ignore, replace, fail) comes from the input. See ProxyCore's MachineFuzzing.

@_spi(Fuzzing) import ProxyCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    MachineFuzzing.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
