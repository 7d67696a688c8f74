// EspalierPluginKit: write an Espalier component in Swift without writing C glue.
// This file holds the entry-point helpers (`Plugin`), the error type every thunk turns into a
// status code (`PluginError`), and the one function that guards the C boundary.
// The kit depends only on CEspalierSDK; it is linked statically into each plugin library and has
// no mutable global state, so several Swift plugins can live in one process.

@_exported import CEspalierSDK

/// An error a component throws: the status code the host receives and the message it reports.
///
/// Thunks turn a thrown `PluginError` into `host->set_error(message)` + `return status`; any
/// other Swift error becomes `ES_ERROR_INTERNAL` with the error's description.
public struct PluginError: Error, CustomStringConvertible, Sendable {
    /// One of `ES_ERROR_*` (never `ES_OK`; a thrown `ES_OK` is reported as `ES_ERROR_INTERNAL`).
    public var status: es_status
    /// One line naming what was wrong and what to do.
    public var message: String
    /// True when a host service failed and already left its own message: the thunk then returns
    /// the status without overwriting that message.
    public var reportedByHost: Bool

    public init(_ status: es_status, _ message: String, reportedByHost: Bool = false) {
        self.status = status
        self.message = message
        self.reportedByHost = reportedByHost
    }

    public var description: String { "\(PluginError.statusName(status)): \(message)" }

    /// `ES_ERROR_INVALID_ARGUMENT`: a parameter, shape or name is wrong.
    public static func invalidArgument(_ message: String) -> PluginError { PluginError(ES_ERROR_INVALID_ARGUMENT, message) }
    /// `ES_ERROR_UNSUPPORTED`: an optional feature that is not available.
    public static func unsupported(_ message: String) -> PluginError { PluginError(ES_ERROR_UNSUPPORTED, message) }
    /// `ES_ERROR_SHAPE`: tensor shapes do not fit.
    public static func shape(_ message: String) -> PluginError { PluginError(ES_ERROR_SHAPE, message) }
    /// `ES_ERROR_INTERNAL`: a bug; the message says where.
    public static func internalError(_ message: String) -> PluginError { PluginError(ES_ERROR_INTERNAL, message) }
    /// `ES_ERROR_OUT_OF_MEMORY`: the system refused memory.
    public static func outOfMemory(_ message: String) -> PluginError { PluginError(ES_ERROR_OUT_OF_MEMORY, message) }
    /// `ES_ERROR_BUDGET`: the memory accountant's budget would be exceeded.
    public static func budget(_ message: String) -> PluginError { PluginError(ES_ERROR_BUDGET, message) }

    /// A short name for a status code ("invalid argument", "shape error", …).
    public static func statusName(_ status: es_status) -> String {
        es_status_name(status).map { String(cString: $0) } ?? "status \(status)"
    }
}

/// Runs `body` at the C boundary: returns `ES_OK`, or sets the host's error message and returns
/// the error's status. Nothing thrown gets past it.
@inline(__always)
func guardBoundary(_ host: PluginHost?, _ context: @autoclosure () -> String, _ body: () throws -> Void) -> es_status {
    do {
        try body()
        return ES_OK
    } catch let error as PluginError {
        if !error.reportedByHost { host?.setError(error.message) }
        return error.status == ES_OK ? ES_ERROR_INTERNAL : error.status
    } catch {
        host?.setError("\(context()): unexpected Swift error: \(error)")
        return ES_ERROR_INTERNAL
    }
}

/// Entry-point helpers: describe the library once, accept or refuse the host's ABI.
///
/// A plugin's whole C surface is:
/// ```swift
/// nonisolated(unsafe) private let descriptor = Plugin.describe(
///     name: "org.example", version: "1.0.0", summary: "…",
///     components: [.gate(MyGate.self, id: "org.example.gate.foo/1", summary: "…")])
///
/// @_cdecl("espalier_plugin_entry_v1")
/// public func espalierPluginEntry(_ abi: UnsafePointer<es_version>?) -> UnsafePointer<es_plugin_desc>? {
///     Plugin.accepts(abi) ? descriptor : nil
/// }
/// ```
/// The global `let` is initialised once, thread-safely, on first use, so every call of the entry
/// returns the same pointer.
public enum Plugin {
    /// The ABI the kit was compiled against (`ESPALIER_VERSION_INIT`).
    public static var abi: es_version { es_version(major: UInt32(ESPALIER_ABI_MAJOR), minor: UInt32(ESPALIER_ABI_MINOR)) }

    /// True if this library can work with the host's ABI: non-NULL and the same major version.
    public static func accepts(_ hostABI: UnsafePointer<es_version>?) -> Bool {
        guard let hostABI else { return false }
        return hostABI.pointee.major == UInt32(ESPALIER_ABI_MAJOR)
    }

    /// Builds the library's `es_plugin_desc` and everything it points to, in memory that is never
    /// freed (the host never unloads a plugin). Call it once, from a global `let`.
    /// `initialize` is the optional `init` of the table, a plain C function; write its body with
    /// `Plugin.guarded(host, "init") { host in … }`.
    public static func describe(name: String, version: String, summary: String,
                                initialize: (@convention(c) (UnsafePointer<es_host_services>?) -> es_status)? = nil,
                                components: [Component]) -> UnsafePointer<es_plugin_desc> {
        let table = UnsafeMutablePointer<es_component_desc>.allocate(capacity: max(components.count, 1))
        for (i, component) in components.enumerated() {
            (table + i).initialize(to: component.makeDescriptor())
        }
        var desc = es_plugin_desc()
        desc.struct_size = UInt32(MemoryLayout<es_plugin_desc>.size)
        desc.abi = abi
        desc.name = immortalCString(name)
        desc.version = immortalCString(version)
        desc.summary = immortalCString(summary)
        desc.`init` = initialize
        desc.components = components.isEmpty ? nil : UnsafePointer(table)
        desc.component_count = UInt32(components.count)
        let out = UnsafeMutablePointer<es_plugin_desc>.allocate(capacity: 1)
        out.initialize(to: desc)
        return UnsafePointer(out)
    }

    /// Runs `body` as a C function body: `ES_OK`, or `host->set_error` and the error's status.
    /// For the plugin's `init` and any other C callback written by hand.
    public static func guarded(_ services: UnsafePointer<es_host_services>?, _ context: String,
                               _ body: (PluginHost) throws -> Void) -> es_status {
        guard let host = PluginHost(services) else { return ES_ERROR_INVALID_ARGUMENT }
        return guardBoundary(host, context) { try body(host) }
    }
}

/// Copies `s` into newly allocated NUL-terminated memory (the caller deallocates it).
func allocateCString(_ s: String) -> UnsafeMutablePointer<CChar> {
    let utf8 = Array(s.utf8)
    let p = UnsafeMutablePointer<CChar>.allocate(capacity: utf8.count + 1)
    for (i, byte) in utf8.enumerated() { p[i] = CChar(bitPattern: byte) }
    p[utf8.count] = 0
    return p
}

/// Copies `s` into NUL-terminated memory that is never freed.
func immortalCString(_ s: String) -> UnsafePointer<CChar> { UnsafePointer(allocateCString(s)) }

/// A Swift string from a C string that may be NULL.
func stringOrEmpty(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

/// Checks that a size-prefixed struct from the host is at least ABI 1.0's size (every v1 field
/// is present); only then may the kit read it whole.
func checkStructSize<T>(_ p: UnsafeRawPointer, _ type: T.Type, _ what: String) throws {
    let declared = p.load(as: UInt32.self)
    guard Int(declared) >= MemoryLayout<T>.size else {
        throw PluginError.invalidArgument("\(what): struct_size \(declared) is smaller than ABI 1.0's \(MemoryLayout<T>.size)")
    }
}
