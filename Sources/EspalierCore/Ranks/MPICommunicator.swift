// The ranks of a search started by Open MPI's mpirun: this process finds the communication layer
// (libEspalierMPI.so, Sources/EspalierMPI) and loads it with dlopen, so the executable does not
// link MPI and a process started without mpirun never initialises it. mpirun tells each process
// its place through the environment (OMPI_COMM_WORLD_RANK and _SIZE), which is how the host knows
// to start MPI at all. One owning type for the library handle; every call from one thread.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class MPICommunicator: Communicator {
    public let rank: Int, size: Int
    public let transport: String
    private let handle: UnsafeMutableRawPointer
    private let allreduceFloat: @convention(c) (UnsafeMutablePointer<Float>?, Int64) -> Int32
    private let allreduceDouble: @convention(c) (UnsafeMutablePointer<Double>?, Int64) -> Int32
    private let broadcastBytes: @convention(c) (UnsafeMutableRawPointer?, Int64, Int32) -> Int32
    private let abortJob: @convention(c) (Int32) -> Void
    private let finalizeMPI: @convention(c) () -> Int32
    private let lastError: @convention(c) () -> UnsafePointer<CChar>?

    /// The place mpirun gave this process (rank, size), or nil when it was not started by mpirun.
    public static func launchedPlace(environment: [String: String] = ProcessInfo.processInfo.environment) -> (rank: Int, size: Int)? {
        guard let s = environment["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init), let r = environment["OMPI_COMM_WORLD_RANK"].flatMap(Int.init),
              s >= 1, r >= 0, r < s else { return nil }
        return (r, s)
    }

    public static let libraryName = "libEspalierMPI.so"

    /// Where the layer is looked for: ESPALIER_MPI_LIBRARY, then beside the executable, then the
    /// loader's own search path.
    static func candidatePaths(environment: [String: String]) -> [String] {
        var out: [String] = []
        if let p = environment["ESPALIER_MPI_LIBRARY"] { out.append(p) }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            out.append(URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent(libraryName).path)
        }
        out.append(libraryName)
        return out
    }

    /// Loads the layer and initialises MPI (MPI_Init_thread, FUNNELED). Call once per process,
    /// in the process that does the work (the supervised worker, never before a fork).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        var tried: [String] = []
        var h: UnsafeMutableRawPointer? = nil
        for path in Self.candidatePaths(environment: environment) {
            // RTLD_GLOBAL: Open MPI's own components, loaded by libmpi, resolve libmpi's symbols.
            if let x = dlopen(path, RTLD_NOW | RTLD_GLOBAL) { h = x; break }
            tried.append("\(path): \(dlerror().map { String(cString: $0) } ?? "not loadable")")
        }
        guard let h else {
            throw EspalierError.config("this process was started by mpirun, but the communication layer \(Self.libraryName) cannot be loaded ("
                                       + tried.joined(separator: "; ") + "). It is built with espalier (swift build) next to the executable and "
                                       + "needs Open MPI's library (Debian: apt install libopenmpi-dev openmpi-bin); ESPALIER_MPI_LIBRARY names another copy")
        }
        func symbol<T>(_ name: String, _: T.Type) throws -> T {
            guard let p = dlsym(h, name) else {
                throw EspalierError.config("\(Self.libraryName) has no \(name); it is not Espalier's communication layer, or of another version")
            }
            return unsafeBitCast(p, to: T.self)
        }
        let interface = try symbol("espalier_mpi_interface", (@convention(c) () -> Int32).self)()
        guard interface == 1 else {
            throw EspalierError.config("\(Self.libraryName) has interface version \(interface), this espalier needs 1: rebuild them together")
        }
        let initialize = try symbol("espalier_mpi_init", (@convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?) -> Int32).self)
        allreduceFloat = try symbol("espalier_mpi_allreduce_float", (@convention(c) (UnsafeMutablePointer<Float>?, Int64) -> Int32).self)
        allreduceDouble = try symbol("espalier_mpi_allreduce_double", (@convention(c) (UnsafeMutablePointer<Double>?, Int64) -> Int32).self)
        broadcastBytes = try symbol("espalier_mpi_broadcast", (@convention(c) (UnsafeMutableRawPointer?, Int64, Int32) -> Int32).self)
        abortJob = try symbol("espalier_mpi_abort", (@convention(c) (Int32) -> Void).self)
        finalizeMPI = try symbol("espalier_mpi_finalize", (@convention(c) () -> Int32).self)
        lastError = try symbol("espalier_mpi_last_error", (@convention(c) () -> UnsafePointer<CChar>?).self)
        let version = try symbol("espalier_mpi_library_version", (@convention(c) () -> UnsafePointer<CChar>?).self)
        handle = h
        var r: Int32 = 0, s: Int32 = 0
        let rc = initialize(&r, &s)
        guard rc == 0 else {
            throw EspalierError.config("MPI did not start (\(lastError().map { String(cString: $0) } ?? "error \(rc)"))")
        }
        rank = Int(r)
        size = Int(s)
        let v = version().map { String(cString: $0) } ?? "MPI"
        transport = v.split(separator: ",").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? v
    }

    private func check(_ rc: Int32, _ what: String) throws {
        guard rc == 0 else {
            throw EspalierError.config("rank \(rank) of \(size): \(what) failed (\(lastError().map { String(cString: $0) } ?? "error \(rc)")); "
                                       + "another rank has probably stopped")
        }
    }

    public func sum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        try check(allreduceFloat(values.baseAddress, Int64(values.count)), "summing \(values.count) floats over the ranks")
    }

    public func sum(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try check(allreduceDouble(values.baseAddress, Int64(values.count)), "summing \(values.count) doubles over the ranks")
    }

    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {
        var count = Int64(rank == root ? bytes.count : 0)
        try withUnsafeMutableBytes(of: &count) { try check(broadcastBytes($0.baseAddress, 8, Int32(root)), "broadcasting a length") }
        if rank != root { bytes = [UInt8](repeating: 0, count: Int(count)) }
        try bytes.withUnsafeMutableBytes { try check(broadcastBytes($0.baseAddress, count, Int32(root)), "broadcasting \(count) bytes") }
    }

    public func abort(code: Int32) -> Never {
        abortJob(code)
        exit(code)
    }

    /// MPI_Finalize (collective; after it no call may be made). A rank that leaves without it
    /// makes mpirun end the job as failed, so every normal exit calls it; the library stays
    /// loaded until the process ends (MPI cannot be started twice).
    public func finish() { _ = finalizeMPI() }
}
