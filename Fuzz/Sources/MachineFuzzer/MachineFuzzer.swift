// libFuzzer entry point for a connection's state machine with a script on the path: client and
// server bytes, closes, timeouts and shutdowns, and a script whose every decision (answer, inject,
// ignore, replace, fail) comes from the input. See ProxyServer's StateMachineFuzzing.

@_spi(Fuzzing) import ProxyServer

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    StateMachineFuzzing.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
