// Finds plugin libraries, loads them with dlopen, and admits them only after checking them:
// the entry symbol, the ABI version (majors equal, minor not older than the host's minimum),
// a well-formed description (sizes, ids, kinds, parameters, dynamic-method signatures), a
// successful init, and ids not already taken. A library that fails any check is reported in
// one line naming the file and the problem, and the others still load. Libraries are never
// closed (they may hold Swift code and the host keeps pointers into them).

import CEspalierSDK
import EspalierCore
import Foundation

/// A library that was refused, and why.
public struct LoadFailure: Codable, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// Where plugins are looked for, in order: the executable's folder, `ESPALIER_PLUGIN_PATH`
/// (colon-separated), then each `--plugin-dir`.
public struct PluginSearchPath {
    public var directories: [String]

    public init(directories: [String]) { self.directories = directories }

    public static func standard(extraDirectories: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
                                executableDirectory: String? = PluginSearchPath.executableDirectory()) -> PluginSearchPath {
        var dirs: [String] = []
        if let exe = executableDirectory { dirs.append(exe) }
        if let env = environment["ESPALIER_PLUGIN_PATH"] {
            dirs += env.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        }
        dirs += extraDirectories
        var seen = Set<String>()
        return PluginSearchPath(directories: dirs.filter { seen.insert(URL(fileURLWithPath: $0).standardized.path).inserted })
    }

    public static func executableDirectory() -> String? {
        guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            return CommandLine.arguments.first.map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }
        }
        return URL(fileURLWithPath: path).deletingLastPathComponent().path
    }

    /// Plugin files: `libespalier-*.so` / `espalier-*.so` (the naming convention), sorted by name
    /// within each directory. Missing directories are skipped.
    public func candidateFiles() -> [String] { scan().files }

    /// The plugin files, and a warning for every folder that is missing or not a folder, and for
    /// every shared library in a folder whose name the convention skips.
    public func scan() -> (files: [String], warnings: [String]) {
        var files: [String] = [], warnings: [String] = []
        for dir in directories {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) else {
                warnings.append("plugin folder \(dir) does not exist; skipped"); continue
            }
            guard isDir.boolValue else {
                warnings.append("plugin folder \(dir) is a file, not a folder; skipped (pass the folder that holds the library)"); continue
            }
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
                warnings.append("plugin folder \(dir) cannot be read; skipped"); continue
            }
            for name in names.sorted() {
                if Self.isPluginFileName(name) {
                    files.append(URL(fileURLWithPath: dir).appendingPathComponent(name).path)
                } else if name == "libEspalierMPI.so" {
                    continue   // the host's own communication layer (a search on several ranks), not a plugin
                } else if name.hasSuffix(".so") || name.contains(".so.") || name.hasSuffix(".dylib") {
                    warnings.append("\(URL(fileURLWithPath: dir).appendingPathComponent(name).path): skipped, not named libespalier-NAME.so; "
                                    + "rename it if it is a plugin")
                }
            }
        }
        return (files, warnings)
    }

    public static func isPluginFileName(_ name: String) -> Bool {
        (name.hasPrefix("libespalier-") || name.hasPrefix("espalier-")) && (name.hasSuffix(".so") || name.hasSuffix(".dylib"))
    }
}

public final class PluginLoader {
    /// The ABI this host speaks (normally the SDK's) and the oldest minor it accepts.
    public let hostABI: es_version
    public let minimumMinor: UInt32
    public let context: HostContext

    public init(context: HostContext, hostMajor: UInt32 = UInt32(ESPALIER_ABI_MAJOR), hostMinor: UInt32 = UInt32(ESPALIER_ABI_MINOR),
                minimumMinor: UInt32 = 0) {
        self.context = context
        self.hostABI = es_version(major: hostMajor, minor: hostMinor)
        self.minimumMinor = minimumMinor
    }

    /// Scans each library in a child process before it may be loaded here (PluginScanner.swift);
    /// nil loads in this process directly (ESPALIER_SCAN=in-process, or no `espalier` executable).
    public var scanner: PluginScanner? = PluginScanner.standard()

    /// Loads every candidate file of `searchPath` into a new registry.
    public func load(_ searchPath: PluginSearchPath) -> PluginRegistry {
        let registry = PluginRegistry()
        var seenFiles = Set<String>()
        var files: [String] = []
        let (found, warnings) = searchPath.scan()
        registry.warnings += warnings
        defer { registry.warnings += PluginLoader.shadowedMethods(registry) }
        for file in found {
            // The same file reached through two directories is loaded once.
            let real = (try? FileManager.default.destinationOfSymbolicLink(atPath: file)).map {
                URL(fileURLWithPath: $0, relativeTo: URL(fileURLWithPath: file).deletingLastPathComponent()).standardized.path
            } ?? URL(fileURLWithPath: file).standardized.path
            guard seenFiles.insert(real).inserted else { continue }
            files.append(file)
        }
        // Only libraries whose out-of-process scan was clean are opened in this process.
        let verdicts = scanner?.scan(files, abi: .init(major: hostABI.major, minor: hostABI.minor, minimumMinor: minimumMinor)) ?? [:]
        for file in files {
            if let v = verdicts[file], !v.ok {
                registry.failures.append(LoadFailure(path: file, reason: v.reason ?? "refused by its scan"))
                continue
            }
            load(file: file, into: registry)
        }
        return registry
    }

    /// A warning for every dynamic method whose slot and name an earlier loaded component already
    /// offers (a built-in name): `--set SLOT=NAME` picks the first, so the later one is never used.
    static func shadowedMethods(_ registry: PluginRegistry) -> [String] {
        var first: [String: Component] = [:], out: [String] = []
        for c in registry.components {
            for m in c.methods {
                let key = "\(m.slot)=\(m.name)"
                if let owner = first[key] {
                    if owner !== c {
                        out.append("dynamic method \(key) of \(c.id) (\(c.library.fileName)) has the name of \(owner.id)'s (\(owner.library.fileName)), "
                                   + "which is loaded first and used for --set \(key); rename it to use it")
                    }
                } else { first[key] = c }
            }
        }
        return out
    }

    /// Loads one library; on failure records it in `registry.failures` and returns nil.
    @discardableResult
    public func load(file: String, into registry: PluginRegistry) -> LoadedLibrary? {
        do {
            let library = try admit(file: file, registry: registry)
            registry.add(library)
            return library
        } catch let error as PluginLoadError {
            registry.failures.append(LoadFailure(path: file, reason: error.description))
        } catch {
            registry.failures.append(LoadFailure(path: file, reason: "\(error)"))
        }
        return nil
    }

    private func admit(file: String, registry: PluginRegistry) throws -> LoadedLibrary {
        guard let handle = dlopen(file, RTLD_NOW | RTLD_LOCAL) else {
            let message = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw PluginLoadError("cannot be loaded: \(message)")
        }
        // From here on the library stays loaded: it may hold Swift code, which must never be unloaded.
        guard let symbol = dlsym(handle, ESPALIER_ENTRY_SYMBOL) else {
            throw PluginLoadError("no entry symbol '\(ESPALIER_ENTRY_SYMBOL)': not an Espalier ABI v1 plugin "
                                  + "(a Swift plugin must export it from a public @_cdecl function)")
        }
        let entry = unsafeBitCast(symbol, to: es_plugin_entry_fn.self)
        var abi = hostABI
        guard let descPointer = entry(&abi) else {
            throw PluginLoadError("refused the host's ABI \(hostABI.major).\(hostABI.minor) (its entry returned NULL)")
        }
        let (library, desc) = try PluginLoader.validate(description: UnsafeRawPointer(descPointer), path: file, handle: handle,
                                                        hostABI: hostABI, minimumMinor: minimumMinor, registry: registry)
        // Init last: only a library that passed every other check gets to run code.
        if let initFn = desc.`init` {
            context.clearError()
            let status = initFn(context.services)
            if status != ES_OK {
                throw PluginLoadError("init failed (\(statusName(status))): \(context.takeError() ?? "the plugin gave no message")")
            }
        }
        return library
    }

    /// Checks a plugin description (what a library's entry returned, at `raw`) without running any
    /// of the plugin's code: the ABI, every struct size, the name, each component (kind, id,
    /// parameters, dynamic methods, vtable) and ids not already in `registry`. Returns the library it
    /// describes and the description as read. `admit` calls it after dlopen; the fuzz tests
    /// (Tests/FuzzTesting) call it on descriptions built from bytes. `handle` is only stored.
    public static func validate(description raw: UnsafeRawPointer, path: String, handle: UnsafeMutableRawPointer,
                                hostABI: es_version = es_version(major: UInt32(ESPALIER_ABI_MAJOR), minor: UInt32(ESPALIER_ABI_MINOR)),
                                minimumMinor: UInt32 = 0, registry: PluginRegistry) throws -> (library: LoadedLibrary, description: es_plugin_desc) {
        // struct_size and abi are the first fields in every version: safe to read before the size check.
        let declaredSize = raw.load(as: UInt32.self)
        let pluginABI = raw.load(fromByteOffset: MemoryLayout<es_plugin_desc>.offset(of: \.abi)!, as: es_version.self)
        guard pluginABI.major == hostABI.major else {
            throw PluginLoadError("built for ABI \(pluginABI.major).\(pluginABI.minor), but this host speaks ABI \(hostABI.major).\(hostABI.minor): "
                                  + "rebuild the plugin against this host's SDK")
        }
        guard pluginABI.minor >= minimumMinor else {
            throw PluginLoadError("built for ABI \(pluginABI.major).\(pluginABI.minor), older than the oldest this host supports "
                                  + "(\(hostABI.major).\(minimumMinor)): rebuild the plugin against this host's SDK")
        }
        let desc: es_plugin_desc = try readSized(raw, declaredSize: declaredSize, what: "plugin description")
        let name = try requiredString(desc.name, "plugin name")
        guard desc.component_count <= 4096 else { throw PluginLoadError("malformed description: \(desc.component_count) components") }
        if desc.component_count > 0 && desc.components == nil { throw PluginLoadError("malformed description: component_count \(desc.component_count) but components is NULL") }

        let library = LoadedLibrary(path: path, handle: handle, name: name, version: optionalString(desc.version) ?? "",
                                    summary: optionalString(desc.summary) ?? "", abi: pluginABI)
        var ids = Set<String>()
        for i in 0..<Int(desc.component_count) {
            let cp = desc.components! + i
            let component = try Component(describing: cp, library: library, index: i)
            guard ids.insert(component.id).inserted else {
                throw PluginLoadError("malformed description: component id '\(component.id)' appears twice")
            }
            if let other = registry.component(id: component.id) {
                throw PluginLoadError("duplicate id '\(component.id)', already provided by \(other.library.path); remove one of the two libraries")
            }
            library.components.append(component)
        }
        return (library, desc)
    }
}

/// One loaded library and its components.
public final class LoadedLibrary {
    public let path: String
    public let name: String
    public let version: String
    public let summary: String
    public let abi: es_version
    public internal(set) var components: [Component] = []
    let handle: UnsafeMutableRawPointer

    init(path: String, handle: UnsafeMutableRawPointer, name: String, version: String, summary: String, abi: es_version) {
        self.path = path; self.handle = handle; self.name = name; self.version = version; self.summary = summary; self.abi = abi
    }

    public var fileName: String { URL(fileURLWithPath: path).lastPathComponent }
}

public struct PluginLoadError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

// MARK: - Reading C structs safely

/// Copies a size-prefixed struct: at most what the writer declared, zero beyond it. Refuses a
/// struct smaller than ABI 1.0's (the oldest layout this host reads): `minimumSize`, for a struct
/// that has grown since 1.0 (the offset of its first newer field), else the whole struct.
func readSized<T>(_ p: UnsafeRawPointer, declaredSize: UInt32? = nil, minimumSize: Int? = nil, what: String) throws -> T {
    let declared = Int(declaredSize ?? p.load(as: UInt32.self))
    let size = MemoryLayout<T>.size
    let oldest = minimumSize ?? size
    guard declared >= oldest else {
        throw PluginLoadError("malformed description: \(what) declares struct_size \(declared), smaller than ABI 1.0's \(oldest) (uninitialised or not an Espalier struct?)")
    }
    guard declared <= 1 << 20 else { throw PluginLoadError("malformed description: \(what) declares an implausible struct_size \(declared)") }
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<T>.alignment)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    buffer.copyMemory(from: p, byteCount: min(declared, size))
    return buffer.load(as: T.self)
}

func optionalString(_ p: UnsafePointer<CChar>?) -> String? { p.map { String(cString: $0) } }

func requiredString(_ p: UnsafePointer<CChar>?, _ what: String) throws -> String {
    guard let p else { throw PluginLoadError("malformed description: \(what) is NULL") }
    let s = String(cString: p)
    guard !s.isEmpty else { throw PluginLoadError("malformed description: \(what) is empty") }
    return s
}

func statusName(_ s: es_status) -> String { es_status_name(s).map { String(cString: $0) } ?? "status \(s)" }
