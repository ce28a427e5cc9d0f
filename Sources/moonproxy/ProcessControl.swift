#if canImport(Glibc)
import Glibc
#endif

/// The Unix chores of a daemon: detaching, the PID file, dropping privileges, file limits, and
/// MySQL Proxy's --keepalive supervisor.
enum ProcessControl {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// Detaches from the terminal: fork, setsid, fork again, stdin/stdout/stderr to /dev/null.
    /// Must run before any thread is started.
    static func daemonize() throws {
        var pid = fork()
        guard pid >= 0 else { throw Failure(description: "fork failed: \(errnoText())") }
        if pid > 0 { _exit(0) }
        guard setsid() >= 0 else { throw Failure(description: "setsid failed: \(errnoText())") }
        signal(SIGHUP, SIG_IGN)
        pid = fork()
        guard pid >= 0 else { throw Failure(description: "fork failed: \(errnoText())") }
        if pid > 0 { _exit(0) }
        umask(0o027)
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            dup2(null, 0)
            dup2(null, 1)
            dup2(null, 2)
            if null > 2 { close(null) }
        }
    }

    /// Writes the PID file and holds a lock on it for as long as the process runs, so that a
    /// second instance started with the same file refuses to start. The file is opened without
    /// following a symlink and must be a regular file with one name, owned by this user or root:
    /// a proxy started as root must not truncate whatever file a less trusted user points the
    /// name at. (It is written in place, not written aside and renamed, because a rename would
    /// move the lock off the name.) Returns the descriptor that holds the lock.
    static func writePIDFile(_ path: String) throws -> CInt {
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let reason = errno == ELOOP ? "it is a symbolic link" : errnoText()
            throw Failure(description: "cannot write the pid file '\(path)': \(reason)")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, info.st_nlink == 1,
              info.st_uid == geteuid() || info.st_uid == 0 else {
            close(fd)
            throw Failure(description: "cannot write the pid file '\(path)': not a regular file of this user's with a single name")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var holder = [UInt8](repeating: 0, count: 32)
            let n = read(fd, &holder, holder.count)
            close(fd)
            let pid = n > 0 ? String(decoding: holder[0..<n], as: UTF8.self).trimmingWhitespace : "?"
            throw Failure(description: "the pid file '\(path)' is held by another running moonproxy (pid \(pid))")
        }
        let text = "\(getpid())\n"
        guard ftruncate(fd, 0) == 0, text.withCString({ pwrite(fd, $0, strlen($0), 0) }) == text.utf8.count else {
            close(fd)
            throw Failure(description: "cannot write the pid file '\(path)': \(errnoText())")
        }
        return fd
    }

    /// Removes the PID file written by `writePIDFile`, whose lock `fd` holds.
    static func removePIDFile(_ path: String, fd: CInt) {
        unlink(path)
        close(fd)
    }

    static func setMaxOpenFiles(_ n: Int) throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = rlim_t(n)
        if limit.rlim_max < rlim_t(n) { limit.rlim_max = rlim_t(n) }
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            throw Failure(description: "cannot raise the open-files limit to \(n): \(errnoText())")
        }
    }

    /// Switches to `user` (its uid, gid and groups); only root may.
    static func switchUser(_ user: String) throws {
        guard let entry = getpwnam(user) else { throw Failure(description: "unknown user '\(user)'") }
        let uid = entry.pointee.pw_uid
        let gid = entry.pointee.pw_gid
        guard getuid() == 0 || geteuid() == 0 else {
            if getuid() == uid { return }
            throw Failure(description: "--user needs root privileges to switch to '\(user)'")
        }
        guard initgroups(user, gid) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
            throw Failure(description: "cannot switch to user '\(user)': \(errnoText())")
        }
    }

    /// --keepalive: runs the proxy in a child process and starts a new one whenever it dies of a
    /// signal or fails, as MySQL Proxy's angel process does. Returns in the child; exits in the parent.
    static func superviseChild(log: (String) -> Void) {
        var stopping = false
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        while true {
            let pid = fork()
            if pid < 0 {
                log("keepalive: fork failed: \(errnoText())")
                exit(1)
            }
            if pid == 0 {
                signal(SIGTERM, SIG_DFL)
                signal(SIGINT, SIG_DFL)
                return
            }
            childPID = pid
            signal(SIGTERM, forwardSignal)
            signal(SIGINT, forwardSignal)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            stopping = stopRequested
            let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
            let code = (status >> 8) & 0xff
            if stopping || (!signaled && code == 0) {
                exit(signaled ? 1 : code)
            }
            log("keepalive: the proxy \(signaled ? "died of signal \(status & 0x7f)" : "exited with status \(code)"), restarting it")
            sleep(1)
        }
    }

    nonisolated(unsafe) private static var childPID: pid_t = 0
    nonisolated(unsafe) private static var stopRequested = false

    private static let forwardSignal: @convention(c) (Int32) -> Void = { signo in
        ProcessControl.stopRequested = true
        if ProcessControl.childPID > 0 { kill(ProcessControl.childPID, signo) }
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
