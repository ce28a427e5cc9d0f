/// One connection's timeouts, as a value counted in the sweeper's ticks (see `TimeoutSweeper`):
/// the handler marks a read from either side on the hot path (a store, no timer), the sweeper
/// ticks every connection of its loop, and what expired comes back for the handler to act on.
/// No clock is read here; a test passes time by ticking.
struct ConnectionTimers: Equatable {
    /// Ticks after which each timeout expires (from the options, by the sweeper).
    struct Limits: Equatable {
        /// --proxy-read-timeout: no byte from a side that owes one.
        var read: Int32
        /// --proxy-write-timeout: a side that takes no byte.
        var write: Int32
        /// --proxy-login-timeout: from the connect to the end of the login (nil: none).
        var login: Int32?
        /// --proxy-backend-greeting-timeout: from the server's accept to its greeting (nil: none).
        var greeting: Int32?
    }

    enum Expiry: Equatable {
        /// The server accepted and sent no greeting: it is down, the next one may serve.
        case greeting
        /// The login did not end in time because no server greeted.
        case loginWithoutServer
        /// The login did not end in time: the client's fault (a stalled TLS handshake, a
        /// half-sent handshake response).
        case login
        /// A write stayed blocked for longer than the write timeout.
        case writeBlocked
        /// No byte from the client for the read timeout.
        case clientIdle
        /// No byte from the server for the read timeout.
        case serverIdle
    }

    /// Bytes came since the last tick (set on the hot path).
    var clientSpoke = false
    var serverSpoke = false
    /// Connected to a server that has not greeted yet.
    var awaitingGreeting = false {
        didSet { if awaitingGreeting { ticksAwaitingGreeting = 0 } }
    }
    private(set) var ticksAwaitingGreeting: Int32 = 0
    /// The login went through (the handler heard it from the machine), or its timeout expired.
    var loginEnded = false
    // 32 bits each: a tick is at least a millisecond
    private(set) var ticksBeforeLogin: Int32 = 0
    private(set) var clientIdle: Int32 = 0
    private(set) var serverIdle: Int32 = 0
    var clientBlocked: Int32 = 0
    var serverBlocked: Int32 = 0

    /// A tick of the sweeper. `connecting`: a server connection is being opened;
    /// `clientWritable`, `serverWritable` (nil: no server connection): the channels'.
    mutating func tick(_ limits: Limits, connecting: Bool, clientWritable: Bool, serverWritable: Bool?) -> Expiry? {
        if awaitingGreeting, let greeting = limits.greeting {
            ticksAwaitingGreeting += 1
            if ticksAwaitingGreeting > greeting {
                awaitingGreeting = false
                return .greeting
            }
        }
        if !loginEnded {
            ticksBeforeLogin += 1
            if !loginEnded, let login = limits.login, ticksBeforeLogin > login {
                loginEnded = true  // reported once: the connection ends
                return awaitingGreeting || connecting ? .loginWithoutServer : .login
            }
        }
        clientIdle = clientSpoke ? 0 : clientIdle + 1
        serverIdle = serverSpoke ? 0 : serverIdle + 1
        clientSpoke = false
        serverSpoke = false
        clientBlocked = clientWritable ? 0 : clientBlocked + 1
        serverBlocked = serverWritable == false ? serverBlocked + 1 : 0
        if clientBlocked >= limits.write || serverBlocked >= limits.write { return .writeBlocked }
        if clientIdle >= limits.read {
            clientIdle = 0
            return .clientIdle
        }
        if serverIdle >= limits.read {
            serverIdle = 0
            return .serverIdle
        }
        return nil
    }
}
