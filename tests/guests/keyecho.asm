; keyecho.asm: a 512-byte x86 boot sector for the integration tests' QEMU guest.
;
; It switches to 80x25 colour text mode, prints the banner "KEYECHO READY" on the
; first line, then echoes every typed key to the screen forever: BIOS int 16h
; reads a key, int 10h teletype writes it. Enter starts a new line; keys without
; an ASCII code (arrows, function keys) print nothing.
;
; The harness (tests/src/guests.rs) assembles it at test time:
;   nasm -f bin -o keyecho.img keyecho.asm

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    cld

    mov ax, 0x0003              ; set video mode 3: 80x25 text, clears the screen
    int 0x10

    mov si, banner
.banner:
    lodsb
    test al, al
    jz .read
    call putc
    jmp .banner

.read:
    xor ah, ah                  ; int 16h AH=0: wait for a key, AL = ASCII
    int 0x16
    test al, al
    jz .read                    ; no ASCII code: nothing to show
    cmp al, 0xe0
    je .read                    ; extended key marker
    cmp al, 0x0d
    jne .show
    call putc                   ; Enter: carriage return, then line feed
    mov al, 0x0a
.show:
    call putc
    jmp .read

; Teletype output of AL on page 0.
putc:
    mov ah, 0x0e
    mov bx, 0x0007
    int 0x10
    ret

banner:
    db "KEYECHO READY", 0x0d, 0x0a, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
