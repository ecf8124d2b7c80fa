// jemalloc's thread caches make a small allocation and its free a few dozen
// instructions; glibc's free took some 150 on the request path.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
